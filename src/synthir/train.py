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
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

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
    positive_key: list[str]
    """What must not repeat inside a batch: an example's `batch_key` (alignment: its query), else the first
    positive's id, or its text for synthetic ones."""


def encode_examples(
    examples: list[dict],
    tokenizer,
    max_length: int,
    query_prefix: str,
    passage_prefix: str,
    max_positives: int,
    max_negatives: int,
) -> tuple[Corpus, Encoded]:
    index: dict[str, int] = {}

    def slot(text: str) -> int:
        return index.setdefault(text, len(index))

    query, positives, negatives, keys = [], [], [], []
    for e in examples:
        query.append(slot(query_prefix + e["query"]))
        positives.append([slot(passage_prefix + p) for p in e["positives"][:max_positives]])
        negatives.append([slot(passage_prefix + n) for n in e["negatives"][:max_negatives]])
        first = e["positive_ids"][0] if e.get("positive_ids") else "synthetic"
        keys.append(e.get("batch_key") or (first if first != "synthetic" else e["positives"][0]))
    corpus = Corpus.build(tokenizer, list(index), max_length)
    return corpus, Encoded(query, positives, negatives, keys)


def bucketed_batches(data: Encoded, corpus: Corpus, batch_size: int, seed: int, bucket: int = 50) -> list[list[int]]:
    """Shuffle, then within windows of `bucket` batches sort by positive length (less padding) and cut into batches
    with no repeated positive; an example whose positive is already in the batch waits for a later one. Batch order
    is shuffled; only what cannot fill a last batch of distinct positives is dropped."""
    rng = random.Random(seed)
    order = list(range(len(data.query)))
    rng.shuffle(order)
    window = batch_size * bucket
    batches: list[list[int]] = []
    waiting: list[int] = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start : start + window], key=lambda i: len(corpus.ids[data.positives[i][0]]))
        full, waiting = _fill(waiting + chunk, data.positive_key, batch_size)
        batches += full
    while waiting:  # the leftovers, until no further full batch forms
        full, rest = _fill(waiting, data.positive_key, batch_size)
        if not full:
            break
        batches, waiting = batches + full, rest
    rng.shuffle(batches)
    return batches


def _fill(items: list[int], keys: list[str], batch_size: int) -> tuple[list[list[int]], list[int]]:
    """Greedy batches of distinct keys; returns the full batches and what is left over."""
    open_batches: list[tuple[list[int], set[str]]] = []
    full, left = [], []
    for i in items:
        target = next((b for b in open_batches if keys[i] not in b[1]), None)
        if target is None:
            if len(open_batches) >= 4:  # bound the search: few batches are filled at once
                left.append(i)
                continue
            target = ([], set())
            open_batches.append(target)
        target[0].append(i)
        target[1].add(keys[i])
        if len(target[0]) == batch_size:
            full.append(target[0])
            open_batches.remove(target)
    return full, left + [i for batch, _ in open_batches for i in batch]


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
        params.max_positives if params.loss == "snn" else 1,
        params.num_negatives,
    )
    batches = bucketed_batches(data, corpus, params.batch_size, params.seed)
    steps_per_epoch = len(batches)
    total = params.max_steps or steps_per_epoch * params.epochs
    if total == 0:
        raise ValueError(f"{triples}: {len(examples)} examples make no batch of {params.batch_size}")
    optimizer = torch.optim.AdamW(_param_groups(model, params.weight_decay), lr=params.lr)
    scheduler = get_cosine_schedule_with_warmup(optimizer, math.ceil(params.warmup_ratio * total), total)
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
        epoch, position = divmod(step, steps_per_epoch)
        epoch_batches = bucketed_batches(data, corpus, params.batch_size, params.seed + epoch)
        batch = epoch_batches[position]
        loss = _batch_loss(model, corpus, data, batch, loss_fn, accelerator.device)
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
            "seconds": round(elapsed, 1),
            "samples_per_second": round((total - resumed_from) * params.batch_size / loop_seconds, 2),
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
