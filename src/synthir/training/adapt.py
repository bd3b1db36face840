"""Corpus pre-adaptation with TSDAE (Wang et al., 2021), GPL's first step: the encoder learns to rebuild each corpus
passage from its embedding of a corrupted copy (most words deleted), through a decoder that shares the encoder's
weights and reads only that embedding. It sees the target corpus and nothing else: no query, no label.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from ..backbones import check_positions
from ..errors import ConfigError

log = logging.getLogger(__name__)


def adapt_stage(params, data: Path, output: Path, metrics: Path) -> dict:
    """The adapt stage: train.base_model adapted to the BEIR dataset's corpus (adapt.method tsdae) on
    train.device, saved with its card; off (adapt.method none), a note in its place. `params` is the stage's view
    (adapt, train.base_model, train.device). Writes the metrics; returns the run summary ({} when off)."""
    from ..fileio import write_json

    if params.adapt.method == "none":
        write_adaptation_off(output, metrics)
        return {}
    summary = adapt_corpus(params.adapt, params.train.base_model, params.train.device, data, output)
    write_json(metrics, summary)
    return summary


def write_adaptation_off(output: Path, metrics: Path) -> None:
    """The declared outputs of an adaptation that did not happen: a note as the model, metrics that say so."""
    from ..fileio import atomic_dir, write_json

    with atomic_dir(output) as folder:
        (folder / "README.md").write_text("Adaptation is off (adapt.method: none): train starts from its base.\n")
    write_json(metrics, {"enabled": False})


def adapt_corpus(adapt, base: str, device: str, data: Path, output: Path) -> dict:
    """`base` adapted with TSDAE to a seeded sample of the corpus's passages, on `device` (where the student
    trains), and saved with its card. Returns the run summary."""
    from ..beir import load_corpus, passage_text
    from ..models import resolve
    from ..retrieval import load_encoder
    from .model_card import describe_adaptation

    corpus = load_corpus(data / "corpus.jsonl")
    passages = sample_passages([passage_text(doc) for doc in corpus.values()], adapt.max_passages, adapt.seed)
    model = load_encoder(base, device=device, dtype="at_least_float32", block="train")
    summary = tsdae(
        model,
        passages,
        epochs=adapt.epochs,
        batch_size=adapt.batch_size,
        lr=adapt.lr,
        deletion_ratio=adapt.deletion_ratio,
        max_seq_length=adapt.max_seq_length,
        seed=adapt.seed,
    )
    describe_adaptation(model, base, resolve(base))
    save_adapted(model, output)
    summary["device"] = device
    return summary


def delete_words(text: str, ratio: float, rng: random.Random) -> str:
    """TSDAE's noise: each word is deleted with probability `ratio`; at least one word is kept."""
    words = text.split()
    if not words:
        return text
    kept = [word for word in words if rng.random() >= ratio]
    return " ".join(kept) if kept else rng.choice(words)


def denoising_batches(
    passages: Sequence[str], batch_size: int, epochs: int, ratio: float, seed: int
) -> Iterator[tuple[list[str], list[str]]]:
    """(corrupted, original) batches over the passages, shuffled per epoch; the last short batch is kept. Drawn
    lazily, so a large corpus is never held corrupted in memory."""
    rng = random.Random(seed)
    for _ in range(epochs):
        order = list(passages)
        rng.shuffle(order)
        for start in range(0, len(order), batch_size):
            originals = order[start : start + batch_size]
            yield [delete_words(text, ratio, rng) for text in originals], originals


def denoising_loss(model):
    """sentence-transformers' TSDAE loss, its decoder tied to the encoder and on the encoder's device. Needs an
    encoder whose architecture has a causal-LM head with cross-attention in transformers (BERT and kin)."""
    from sentence_transformers.sentence_transformer.losses import DenoisingAutoEncoderLoss
    from transformers.utils import logging as hf_logging

    device = model.device
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the decoder's new cross-attention and LM head are expected to be missing
    try:
        loss = DenoisingAutoEncoderLoss(model, tie_encoder_decoder=True)
    except (ValueError, AssertionError, OSError) as error:
        raise ConfigError(f"adapt.method tsdae: this encoder cannot be tied to a decoder ({error})") from None
    finally:
        hf_logging.set_verbosity(verbosity)
    return loss.to(device)  # the decoder loads on the CPU, and tying moved the encoder's weights to it


def tsdae(
    model,
    passages: Sequence[str],
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    deletion_ratio: float,
    max_seq_length: int,
    seed: int,
) -> dict:
    """Adapt `model` (a SentenceTransformer, changed in place) to the passages: AdamW at a constant `lr`, no
    weight decay, as TSDAE trains. The passages are cut to `max_seq_length` tokens while adapting; the model keeps
    its own limit afterwards. Returns the run summary."""
    import torch

    if not passages:
        raise ConfigError("adapt: the corpus has no passage to adapt to")
    check_positions(model, max_seq_length, "adapt.max_seq_length")
    torch.manual_seed(seed)
    started = time.perf_counter()
    own_limit = model.max_seq_length
    model.max_seq_length = max_seq_length
    loss = denoising_loss(model)
    loss.train()
    optimizer = torch.optim.AdamW([p for p in loss.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    steps = epochs * math.ceil(len(passages) / batch_size)
    losses = []
    for step, (corrupted, originals) in enumerate(
        denoising_batches(passages, batch_size, epochs, deletion_ratio, seed), 1
    ):
        value = loss([_features(model, corrupted), _features(model, originals)], None)
        value.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(value.detach()))
        if step % 50 == 0 or step == steps:
            log.info("tsdae step %d/%d: loss %.4f", step, steps, sum(losses[-50:]) / len(losses[-50:]))
    model.max_seq_length = own_limit
    model.eval()
    return {
        "enabled": True,
        "method": "tsdae",
        "passages": len(passages),
        "steps": steps,
        "loss_first": round(sum(losses[:20]) / len(losses[:20]), 4),
        "loss_last": round(sum(losses[-20:]) / len(losses[-20:]), 4),
        "device": str(model.device),
        "seconds": round(time.perf_counter() - started, 1),
    }


def _features(model, texts: list[str]) -> dict:
    features = model.preprocess(texts)  # input ids, masks and the modality name
    return {name: value.to(model.device) if hasattr(value, "to") else value for name, value in features.items()}


def sample_passages(texts: Sequence[str], max_passages: int, seed: int) -> list[str]:
    """A seeded subset of `max_passages` passages (0: all of them, in corpus order)."""
    if not max_passages or max_passages >= len(texts):
        return list(texts)
    return random.Random(seed).sample(list(texts), max_passages)


def save_adapted(model, output: Path) -> None:
    """The adapted encoder as a sentence-transformers folder, written whole or not at all."""
    from ..fileio import atomic_dir

    with atomic_dir(output) as folder:
        model.save(str(folder))
