"""Training a sentence-transformers retriever with accelerate: tokenized once, length-bucketed batches.

The hot loop does no per-sample Python work: every text is tokenized ahead of training, a batch is a list of
indices into those token arrays, and padding is one vectorised copy. Batches never hold the same positive twice
(an in-batch false negative). DVCLive logs loss and learning rate; checkpoints allow resuming.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .examples import SYNTRIEVER_NEGATIVES, batch_keys, negative_kind, positive_kind

log = logging.getLogger(__name__)

LOSS_CURVE, LR_CURVE = "train/loss", "train/lr"
"""The DVCLive metrics a run logs per step: `<live>/plots/metrics/train/{loss,lr}.tsv`."""


@dataclass
class Corpus:
    """Every distinct text of the training set, tokenized once: ids[i] is text i's token ids."""

    ids: list[np.ndarray]
    pad_id: int

    @classmethod
    def build(cls, tokenizer, texts: list[str], max_length: int, batch: int = 4096) -> Corpus:
        ids = []
        for start in range(0, len(texts), batch):
            encoded = tokenizer(texts[start : start + batch], truncation=True, max_length=max_length)["input_ids"]
            ids += [np.asarray(x, dtype=np.int64) for x in encoded]
        return cls(ids, tokenizer.pad_token_id or 0)

    def pad(self, indices: list[int], device) -> dict[str, torch.Tensor]:
        lengths = np.fromiter((len(self.ids[i]) for i in indices), dtype=np.int64, count=len(indices))
        tokens = np.full((len(indices), int(lengths.max())), self.pad_id, dtype=np.int64)
        mask = np.arange(tokens.shape[1])[None, :] < lengths[:, None]
        tokens[mask] = np.concatenate([self.ids[i] for i in indices])
        return {
            "input_ids": torch.from_numpy(tokens).to(device),
            "attention_mask": torch.from_numpy(mask.astype(np.int64)).to(device),
        }


@dataclass
class Encoded:
    """The training set as indices into a `Corpus`: per example a query, positives and negatives."""

    query: list[int]
    positives: list[list[int]]
    negatives: list[list[int]]
    keys: list[tuple[str, ...]]
    """What examples of one batch may not share (`synthir.examples.batch_keys`)."""
    positive_kinds: list[list[str]] = field(default_factory=list)
    negative_kinds: list[list[str]] = field(default_factory=list)

    def kinds_trained(self, batches: list[list[int]]) -> dict[str, dict[str, int]]:
        """How many positives and negatives of each kind (`synthir.examples`) the batches put into the loss."""
        positives, negatives = Counter(), Counter()
        for i in (i for batch in batches for i in batch):
            positives.update(self.positive_kinds[i])
            negatives.update(self.negative_kinds[i])
        return {"positives": dict(sorted(positives.items())), "negatives": dict(sorted(negatives.items()))}


def trained_negatives(ids: list[str], num_negatives: int) -> list[int]:
    """Positions of the negatives an example trains on, from their ids: every Syntriever negative (synthetic and
    relabeled), and the first `num_negatives` of the others (mined or generated)."""
    own = [i for i, d in enumerate(ids) if d in SYNTRIEVER_NEGATIVES]
    others = [i for i, d in enumerate(ids) if d not in SYNTRIEVER_NEGATIVES][:num_negatives]
    return sorted(own + others)


def encode_examples(
    examples: list[dict],
    tokenizer,
    max_length: int,
    query_prefix: str,
    passage_prefix: str,
    all_positives: bool,
    num_negatives: int,
) -> tuple[Corpus, Encoded]:
    """Tokenize every distinct text once. `all_positives`: every positive of an example (snn), else the first
    (mnrl, and the alignment losses' c+)."""
    index: dict[str, int] = {}

    def slot(text: str) -> int:
        return index.setdefault(text, len(index))

    data = Encoded([], [], [], [])
    for e in examples:
        positive_ids = _padded(e.get("positive_ids", []), len(e["positives"]), "document")
        negative_ids = _padded(e.get("negative_ids", []), len(e["negatives"]), "mined")
        kept_positives = range(len(e["positives"]) if all_positives else 1)
        kept_negatives = trained_negatives(negative_ids, num_negatives)
        data.query.append(slot(query_prefix + e["query"]))
        data.positives.append([slot(passage_prefix + e["positives"][i]) for i in kept_positives])
        data.negatives.append([slot(passage_prefix + e["negatives"][i]) for i in kept_negatives])
        data.keys.append(batch_keys(e))
        data.positive_kinds.append([positive_kind(positive_ids[i]) for i in kept_positives])
        data.negative_kinds.append([negative_kind(negative_ids[i]) for i in kept_negatives])
    return Corpus.build(tokenizer, list(index), max_length), data


def _padded(ids: list[str], length: int, filler: str) -> list[str]:
    """An example's ids, one per item (hand-written triples may leave them out)."""
    return list(ids[:length]) + [filler] * (length - len(ids))


def bucketed_batches(data: Encoded, corpus: Corpus, batch_size: int, seed: int, bucket: int = 50) -> list[list[int]]:
    """One epoch's batches. Shuffle, then within windows of `bucket` batches sort by positive length (less
    padding) and cut into batches whose examples share no key (query, first positive); an example that conflicts
    waits for a later batch. Every example is in exactly one batch: what cannot fill a full batch of distinct keys
    forms smaller last batches. Batch order is shuffled."""
    rng = random.Random(seed)
    order = list(range(len(data.query)))
    rng.shuffle(order)
    window = batch_size * bucket
    batches: list[list[int]] = []
    waiting: list[int] = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start : start + window], key=lambda i: len(corpus.ids[data.positives[i][0]]))
        full, waiting = _fill(waiting + chunk, data.keys, batch_size)
        batches += full
    while waiting:  # the leftovers: full batches while they form, then smaller ones
        full, rest = _fill(waiting, data.keys, batch_size)
        if not full:
            full, rest = _fill(waiting, data.keys, batch_size, max_open=len(waiting), flush=True)
        batches, waiting = batches + full, rest
    rng.shuffle(batches)
    return batches


def _fill(
    items: list[int], keys: list[tuple[str, ...]], batch_size: int, max_open: int = 4, flush: bool = False
) -> tuple[list[list[int]], list[int]]:
    """Greedy batches of examples with disjoint keys, at most `max_open` filled at once; returns the full batches
    (with `flush`, the unfilled ones too) and what is left over."""
    open_batches: list[tuple[list[int], set[str]]] = []
    full, left = [], []
    for i in items:
        target = next((b for b in open_batches if b[1].isdisjoint(keys[i])), None)
        if target is None:
            if len(open_batches) >= max_open:
                left.append(i)
                continue
            target = ([], set())
            open_batches.append(target)
        target[0].append(i)
        target[1].update(keys[i])
        if len(target[0]) == batch_size:
            full.append(target[0])
            open_batches.remove(target)
    if flush:
        return full + [batch for batch, _ in open_batches], left
    return full, left + [i for batch, _ in open_batches for i in batch]


def batch_schedule(
    data: Encoded, corpus: Corpus, batch_size: int, seed: int, epochs: int, max_steps: int
) -> list[list[int]]:
    """Every step's batch, built once: epoch e's batches (seed + e), epoch after epoch, for `epochs` epochs or,
    when `max_steps` is set, until that many steps."""
    steps: list[list[int]] = []
    epoch = 0
    while (len(steps) < max_steps) if max_steps else (epoch < epochs):
        epoch_batches = bucketed_batches(data, corpus, batch_size, seed + epoch)
        if not epoch_batches:
            break
        steps += epoch_batches
        epoch += 1
    return steps[:max_steps] if max_steps else steps


def run_hash(settings: dict, triples: Path) -> str:
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    digest.update(triples.read_bytes())
    return digest.hexdigest()[:16]


def train(params, triples: Path, output: Path, live_dir: Path, checkpoints: Path) -> dict:
    """Fine-tune `params.base_model` on the triples file; save a sentence-transformers folder with a model card."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from dvclive import Live
    from tqdm.auto import tqdm
    from transformers import get_cosine_schedule_with_warmup

    from .fileio import read_jsonl
    from .models import resolve
    from .retrieval import load_encoder

    started = time.perf_counter()
    accelerator = Accelerator(mixed_precision=params.mixed_precision if torch.cuda.is_available() else "no")
    set_seed(params.seed)
    model = load_encoder(params.base_model, params.max_seq_length, device=str(accelerator.device), dtype="float32")
    if params.gradient_checkpointing:
        model[0].auto_model.gradient_checkpointing_enable()
    examples = list(read_jsonl(triples))
    corpus, data = encode_examples(
        examples,
        model.tokenizer,
        model.max_seq_length,
        params.query_prefix,
        params.passage_prefix,
        params.loss == "snn",
        params.num_negatives,
    )
    schedule = batch_schedule(data, corpus, params.batch_size, params.seed, params.epochs, params.max_steps)
    total = len(schedule)
    if total == 0:
        raise ValueError(f"{triples}: {len(examples)} examples make no batch of {params.batch_size}")
    optimizer = torch.optim.AdamW(_param_groups(model, params.weight_decay), lr=params.lr)
    warmup = params.warmup_steps or math.ceil(params.warmup_ratio * total)
    scheduler = get_cosine_schedule_with_warmup(optimizer, warmup, total)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    loss_fn = batch_loss_fn(params.loss, params.tau)

    state_dir = checkpoints / run_hash(params.model_dump(), triples)
    step = resumed_from = _resume(accelerator, state_dir)
    live = Live(dir=str(live_dir), resume=step > 0, dvcyaml=False, save_dvc_exp=False)
    model.train()
    losses = []
    loop_started = time.perf_counter()
    progress = tqdm(total=total, initial=step, desc="train", unit="step", disable=not accelerator.is_main_process)
    while step < total:
        loss = _batch_loss(model, corpus, data, schedule[step], loss_fn, accelerator.device)
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        step += 1
        losses.append(loss.item())
        progress.update()
        progress.set_postfix(loss=f"{losses[-1]:.4f}")
        live.log_metric(LOSS_CURVE, losses[-1])
        live.log_metric(LR_CURVE, scheduler.get_last_lr()[0])
        live.next_step()
        if params.checkpoint_steps and step % params.checkpoint_steps == 0 and step < total:
            accelerator.save_state(str(state_dir / f"step-{step}"))
    progress.close()
    live.end()
    loop_seconds = max(time.perf_counter() - loop_started, 1e-9)
    unwrapped = accelerator.unwrap_model(model)
    if accelerator.is_main_process:
        unwrapped.save(str(output))
        elapsed = time.perf_counter() - started
        summary = {
            "steps": total,
            "examples": len(examples),
            "texts": len(corpus.ids),
            "batch_size": params.batch_size,
            "final_loss": round(float(np.mean(losses[-20:])), 5) if losses else None,
            "in_loss": data.kinds_trained(schedule),
            "seconds": round(elapsed, 1),
            "samples_per_second": round(sum(map(len, schedule[resumed_from:])) / loop_seconds, 2),
            "device": str(accelerator.device),
            "resumed_from_step": resumed_from,
        }
        write_model_card(output, params, triples, summary, resolve(params.base_model))
        return summary
    return {}


def write_empty_curves(live_dir: Path) -> None:
    """The curves of a run that did not happen (alignment off): DVCLive's files with a header and no steps, so
    the declared plots exist, can be committed, and `dvc plots show` draws them empty."""
    from .fileio import atomic_file

    for curve in (LOSS_CURVE, LR_CURVE):
        with atomic_file(live_dir / "plots" / "metrics" / f"{curve}.tsv") as handle:
            handle.write(f"step\t{curve.rpartition('/')[2]}\n")


def batch_loss_fn(name: str, tau: float):
    """Loss on one batch: query embeddings [B, d], passage embeddings [M, d] and, per query, the slots of its
    positives and negatives among the passages. mnrl/snn/partial_pl score every passage of the batch for every
    query; bt compares each query's own (c+, c−) only."""
    from .losses import bt_from_scores, mnrl_from_scores, partial_pl_from_scores, similarity, snn_from_scores

    def mnrl(q, p, pos_slots, neg_slots):
        first = [slots[0] for slots in pos_slots]  # column i = query i's positive
        rest = [j for j in range(p.shape[0]) if j not in set(first)]
        return mnrl_from_scores(similarity(q, p[first + rest], tau))

    def snn(q, p, pos_slots, neg_slots):
        positive = torch.zeros(q.shape[0], p.shape[0], dtype=torch.bool, device=q.device)
        for i, slots in enumerate(pos_slots):
            positive[i, slots] = True
        valid = torch.ones(p.shape[0], dtype=torch.bool, device=q.device)
        return snn_from_scores(similarity(q, p, tau), positive, valid)

    def pairs(q, p, pos_slots, neg_slots):  # one (c+, c−) per query: columns c+_1..c+_B, c−_1..c−_B
        if any(not slots for slots in neg_slots):
            raise ValueError(f"{name} needs a rejected passage for every example")
        columns = [slots[0] for slots in pos_slots] + [slots[0] for slots in neg_slots]
        return similarity(q, p[columns], tau)

    def partial_pl(q, p, pos_slots, neg_slots):
        return partial_pl_from_scores(pairs(q, p, pos_slots, neg_slots))

    def bt(q, p, pos_slots, neg_slots):
        scores = pairs(q, p, pos_slots, neg_slots)
        rows = torch.arange(q.shape[0], device=q.device)
        return bt_from_scores(scores[rows, rows], scores[rows, rows + q.shape[0]])

    return {"mnrl": mnrl, "snn": snn, "partial_pl": partial_pl, "bt": bt}[name]


def _param_groups(model, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        (no_decay if parameter.ndim < 2 or "LayerNorm" in name or "norm" in name.lower() else decay).append(parameter)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _resume(accelerator, state_dir: Path) -> int:
    saved = sorted(state_dir.glob("step-*"), key=lambda p: int(p.name.split("-")[1])) if state_dir.exists() else []
    if not saved:
        return 0
    accelerator.load_state(str(saved[-1]))
    log.info("resumed from %s", saved[-1])
    return int(saved[-1].name.split("-")[1])


def _batch_loss(model, corpus: Corpus, data: Encoded, batch: list[int], loss_fn, device) -> torch.Tensor:
    """Embed the batch's queries and passages in two forward passes, then apply the loss."""
    queries = [data.query[i] for i in batch]
    passages, pos_slots, neg_slots = [], [], []
    for i in batch:
        pos_slots.append(list(range(len(passages), len(passages) + len(data.positives[i]))))
        passages += data.positives[i]
        neg_slots.append(list(range(len(passages), len(passages) + len(data.negatives[i]))))
        passages += data.negatives[i]
    q = model(corpus.pad(queries, device))["sentence_embedding"]
    p = model(corpus.pad(passages, device))["sentence_embedding"]
    return loss_fn(q, p, pos_slots, neg_slots)


def write_model_card(output: Path, params, triples: Path, summary: dict, base: str) -> None:
    lines = [
        f"# {output.name}",
        "",
        f"A sentence-transformers retriever fine-tuned by synthir from `{params.base_model}` ({base}).",
        "",
        "## Data",
        f"- training examples: `{triples}` ({summary['examples']} examples, {summary['texts']} distinct texts)",
        "",
        "## Training parameters",
        "```json",
        json.dumps(params.model_dump(), indent=2),
        "```",
        "",
        "## Run",
        "```json",
        json.dumps(summary, indent=2),
        "```",
    ]
    (output / "README.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
