"""Training a sentence-transformers retriever with accelerate, on one process or several.

Every text is tokenized once (`TokenTable`); the whole step schedule is built before the first step from
length-bucketed batches whose examples share no query and no positive (an in-batch false negative). The hot loop
does no per-sample Python work: a batch is a list of indices, and padding is one vectorised copy.

`batch_size` is the global batch: the examples of one optimizer step, every one of them an in-batch negative for
the others. N processes each embed a contiguous shard of it, gather every shard's embeddings (what
sentence-transformers calls gather_across_devices) and compute the global batch's loss; DDP averages their
gradients. N processes thus take the step of one process with the same batch (tests/test_distributed.py).
DVCLive logs loss and learning rate every `log_every` steps (the window's mean loss, summed on the device: no
device sync in between); checkpoints resume a killed run exactly.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
import shutil
import time
from collections import Counter, deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..backbones import add_lora, merge_lora, set_attention_dropout
from ..config import FitParams
from ..errors import ConfigError, DataError, excerpt
from ..models import resolve
from ..triples.examples import SYNTRIEVER_NEGATIVES, batch_keys, negative_kind, positive_kind
from .losses import DISTILLATION_LOSSES, BatchLoss, Margins, Slots, batch_loss, host_to_device
from .model_card import describe_training, set_prompts

log = logging.getLogger(__name__)

LOSS_CURVE, LR_CURVE = "train/loss", "train/lr"
"""The DVCLive metrics a run logs every `log_every` steps: `<live>/plots/metrics/train/{loss,lr}.tsv`."""
FINAL_LOSS_STEPS = 20
"""metrics' final_loss: the mean loss of the run's last this many steps."""
NOT_COMPUTED = frozenset({"log_every"})
"""FitParams fields that change what is reported, not the weights: left out of the run hash and the model card."""


@dataclass
class TokenTable:
    """Every distinct text of the training set, tokenized once: ids[i] is text i's token ids."""

    ids: list[np.ndarray]
    pad_id: int

    @classmethod
    def build(cls, tokenizer, texts: list[str], max_length: int, batch: int = 4096) -> TokenTable:
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
            "input_ids": host_to_device(torch.from_numpy(tokens), device),
            "attention_mask": host_to_device(torch.from_numpy(mask.astype(np.int64)), device),
        }


@dataclass
class Encoded:
    """The training set as indices into a `TokenTable`: per example a query, positives and negatives."""

    query: list[int]
    positives: list[list[int]]
    negatives: list[list[int]]
    keys: list[tuple[str, ...]]
    """What examples of one batch may not share (`synthir.triples.examples.batch_keys`)."""
    positive_kinds: list[list[str]] = field(default_factory=list)
    negative_kinds: list[list[str]] = field(default_factory=list)
    margins: list[list[float]] | None = None
    """Per example, the teacher's score of the first positive minus each trained negative's (distillation)."""

    def kinds_trained(self, batches: list[list[int]]) -> dict[str, dict[str, int]]:
        """How many positives and negatives of each kind (`synthir.triples.examples`) the batches put into the loss."""
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
    margins: bool = False,
) -> tuple[TokenTable, Encoded]:
    """Tokenize every distinct text once. `all_positives`: every positive of an example (snn), else the first
    (mnrl, and the alignment losses' c+). `margins`: the teacher margins of each trained negative, from the
    examples' `teacher` scores (`synthir.triples.teacher`)."""
    index: dict[str, int] = {}

    def slot(text: str) -> int:
        return index.setdefault(text, len(index))

    data = Encoded([], [], [], [], margins=[] if margins else None)
    for number, e in enumerate(examples, start=1):
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
        if data.margins is not None:
            data.margins.append(teacher_margins(e, kept_negatives, number))
    return TokenTable.build(tokenizer, list(index), max_length), data


def teacher_margins(example: dict, negatives: list[int], number: int) -> list[float]:
    """The teacher's score of the example's first positive minus that of each of the given negatives."""
    teacher = example.get("teacher")
    if not teacher or len(teacher.get("negatives", [])) < len(example["negatives"]):
        raise ConfigError(
            f"training example {number} ({example.get('query_id', '?')}) has no teacher score for every negative: "
            "train.loss marginmse distils triples.teacher's scores (set triples.teacher.method)"
        )
    return [teacher["positive"] - teacher["negatives"][i] for i in negatives]


def _padded(ids: list[str], length: int, filler: str) -> list[str]:
    """An example's ids, one per item (hand-written triples may leave them out)."""
    return list(ids[:length]) + [filler] * (length - len(ids))


def bucketed_batches(data: Encoded, table: TokenTable, batch_size: int, seed: int, bucket: int = 50) -> list[list[int]]:
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
        chunk = sorted(order[start : start + window], key=lambda i: len(table.ids[data.positives[i][0]]))
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
    data: Encoded, table: TokenTable, batch_size: int, seed: int, epochs: int, max_steps: int
) -> list[list[int]]:
    """Every step's batch, built once: epoch e's batches (seed + e), epoch after epoch, for `epochs` epochs or,
    when `max_steps` is set, until that many steps."""
    steps: list[list[int]] = []
    epoch = 0
    while (len(steps) < max_steps) if max_steps else (epoch < epochs):
        epoch_batches = bucketed_batches(data, table, batch_size, seed + epoch)
        if not epoch_batches:
            break
        steps += epoch_batches
        epoch += 1
    return steps[:max_steps] if max_steps else steps


def computed_settings(params: FitParams) -> dict:
    """The settings that decide the weights: what was computed, not how it was launched or reported."""
    return params.model_dump(include=set(FitParams.model_fields) - NOT_COMPUTED)


def run_hash(settings: dict, triples: Path) -> str:
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    digest.update(triples.read_bytes())
    return digest.hexdigest()[:16]


# --- one global batch, split across processes ---


@dataclass
class BatchLayout:
    """A global batch as the loss sees it: the queries in batch order and the passages example by example (each
    example's positives, then its negatives). Example j's passages are passages[starts[j]:starts[j + 1]], so a
    contiguous run of examples owns a contiguous run of passages."""

    queries: list[int]
    passages: list[int]
    positives: Slots
    negatives: Slots
    starts: list[int]
    margins: Margins | None = None

    @classmethod
    def of(cls, data: Encoded, batch: list[int]) -> BatchLayout:
        margins = [data.margins[i] for i in batch] if data.margins is not None else None
        layout = cls([data.query[i] for i in batch], [], [], [], [0], margins)
        for i in batch:
            for texts, slots in ((data.positives[i], layout.positives), (data.negatives[i], layout.negatives)):
                slots.append(list(range(len(layout.passages), len(layout.passages) + len(texts))))
                layout.passages += texts
            layout.starts.append(len(layout.passages))
        return layout


def shard_bounds(size: int, processes: int) -> list[tuple[int, int]]:
    """Each process's contiguous share of a batch of `size` examples; shares differ by at most one example."""
    base, extra = divmod(size, processes)
    bounds, start = [], 0
    for rank in range(processes):
        end = start + base + (rank < extra)
        bounds.append((start, end))
        start = end
    return bounds


def gather_rows(local: torch.Tensor, counts: list[int], rank: int) -> torch.Tensor:
    """Every process's rows, in rank order (`counts[r]` rows from process r). This process's own rows keep their
    autograd graph; the others' are constants here, and their gradient is computed where they were embedded."""
    if len(counts) == 1:
        return local
    import torch.distributed as dist

    padded = local.detach().new_zeros((max(counts), *local.shape[1:]))
    padded[: local.shape[0]] = local.detach()
    pieces = [torch.empty_like(padded) for _ in counts]
    dist.all_gather(pieces, padded)
    pieces[rank] = local
    return torch.cat([piece[:count] for piece, count in zip(pieces, counts, strict=True)])


def _embed(model, table: TokenTable, text_ids: list[int], fallback: int, device) -> torch.Tensor:
    """The texts' embeddings. An empty shard embeds `fallback` and keeps none of it, so that its process still
    runs the model and joins the gradient all-reduce (with zero gradients)."""
    rows = model(table.pad(text_ids or [fallback], device))["sentence_embedding"]
    return rows if text_ids else rows[:0]


def global_batch_loss(
    model, table: TokenTable, data: Encoded, batch: list[int], loss_fn: BatchLoss, rank: int, processes: int, device
) -> torch.Tensor:
    """The loss of the whole global batch, computed on every process: this process embeds its shard, every
    shard's embeddings are gathered, and gradients flow into this process's own embeddings only. Scaled by the
    number of processes (`backward`), the averaged gradient is exactly the global batch's."""
    layout = BatchLayout.of(data, batch)
    bounds = shard_bounds(len(batch), processes)
    first, last = bounds[rank]
    queries = _embed(model, table, layout.queries[first:last], layout.queries[0], device)
    passages = _embed(
        model, table, layout.passages[layout.starts[first] : layout.starts[last]], layout.passages[0], device
    )
    all_queries = gather_rows(queries, [b - a for a, b in bounds], rank)
    all_passages = gather_rows(passages, [layout.starts[b] - layout.starts[a] for a, b in bounds], rank)
    return loss_fn(all_queries, all_passages, layout.positives, layout.negatives, layout.margins)


# --- a training run: setup, loop, summary ---


@dataclass
class Run:
    """What a training run holds from setup to summary."""

    params: FitParams
    accelerator: Any
    model: Any
    optimizer: torch.optim.Optimizer
    scheduler: Any
    table: TokenTable
    data: Encoded
    schedule: list[list[int]]
    sources: Counter
    """Training examples per source (train, doc2query, syntriever, ...)."""
    state_dir: Path
    loss_fn: BatchLoss


_MORE_EXAMPLES = "make more: raise sample.fraction, loosen the verify filters or add triples.sources"


def setup(params: FitParams, triples: Path, checkpoints: Path) -> Run:
    """Model, tokenized examples, the whole step schedule, optimizer and scheduler, prepared by accelerate."""
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration, set_seed
    from transformers import get_cosine_schedule_with_warmup

    from ..fileio import read_jsonl
    from ..retrieval import load_encoder, model_fingerprint

    if params.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device is cuda, but torch sees no GPU here (train.device: cpu trains on the CPU)")
    examples = list(read_jsonl(triples))
    if not examples:
        raise DataError(f"{triples}: no training examples; {_MORE_EXAMPLES}")
    on_gpu = params.device == "cuda"
    accelerator = Accelerator(  # split_batches: a step is one global batch, so the LR schedule steps once
        cpu=not on_gpu,
        mixed_precision=params.mixed_precision if on_gpu else "no",
        dataloader_config=DataLoaderConfiguration(split_batches=True),
    )
    set_seed(params.seed)
    with builders_first(accelerator):
        model = load_encoder(
            params.base_model,
            params.max_seq_length,
            device=str(accelerator.device),
            dtype="at_least_float32",
            pooling=params.pooling,
            keep_layers=params.keep_layers,
            length_key="train.max_seq_length",
        )
    if params.attention_dropout is not None and not set_attention_dropout(model, params.attention_dropout):
        raise ConfigError(f"train.attention_dropout: {params.base_model} has no attention dropout synthir can set")
    # a checkpoint resumes only a run from the same starting weights, whatever base_model names (models/adapted
    # holds different weights from run to run)
    start = model_fingerprint(model)
    if params.lora_rank:
        add_lora(model, params.lora_rank)
    if params.gradient_checkpointing:  # reentrant checkpointing (transformers 4's default) fails under DDP
        model[0].auto_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    table, data = encode_examples(
        examples,
        model.tokenizer,
        model.max_seq_length,
        params.query_prefix,
        params.passage_prefix,
        params.loss == "snn",
        params.num_negatives,
        margins=params.loss in DISTILLATION_LOSSES,
    )
    if data.margins is not None and not any(data.margins):
        raise ConfigError(f"{triples}: no example has a negative, and train.loss {params.loss} learns from margins")
    schedule = batch_schedule(data, table, params.batch_size, params.seed, params.epochs, params.max_steps)
    if not schedule:
        raise DataError(f"{triples}: {len(examples)} examples make no training step; {_MORE_EXAMPLES}")
    freeze_unreachable(model, table)
    optimizer = torch.optim.AdamW(_param_groups(model, params.weight_decay), lr=params.lr)
    warmup = params.warmup_steps or math.ceil(params.warmup_ratio * len(schedule))
    scheduler = get_cosine_schedule_with_warmup(optimizer, warmup, len(schedule))
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    # what the run computes: not how it was launched (train.launch), but the number of processes (random states)
    settings = {**computed_settings(params), "processes": accelerator.num_processes, "start": start}
    run_id = agreed(  # processes on several machines must train the same batches from the same weights
        accelerator,
        run_hash(settings, triples),
        "trains another run than process 0 (its params, triples or base model differ; every machine needs the "
        "same params.yaml, code and data)",
    )
    state_dir = checkpoints / run_id
    return Run(
        params,
        accelerator,
        model,
        optimizer,
        scheduler,
        table,
        data,
        schedule,
        Counter(example.get("source", "unknown") for example in examples),
        state_dir,
        batch_loss(params.loss, params.tau),
    )


@contextmanager
def builders_first(accelerator) -> Iterator[None]:
    """Process 0 first, then the first process of every other machine, then the rest: what loading a model
    builds into the cache (a joined multi-part model, `synthir.models`; an encoder built from a plain or GGUF
    model, `synthir.backbones`) is built by one process per machine while the others wait at a barrier, and
    then read. A cache shared by the machines is built once."""
    with accelerator.main_process_first(), accelerator.local_main_process_first():
        yield


def agreed(accelerator, value: str, differs: str) -> str:
    """`value` if every process holds the same; else a ConfigError saying how the first process that differs
    from process 0 `differs` (the processes of several machines each read their own files)."""
    from accelerate.utils import gather_object

    values = gather_object([value]) if accelerator.num_processes > 1 else [value]
    other = next((rank for rank, seen in enumerate(values) if seen != values[0]), None)
    if other is not None:
        raise ConfigError(f"train: process {other} {differs} ({excerpt(values[other])} against {excerpt(values[0])})")
    return value


def end_distributed() -> None:
    """Destroy the process group, if a distributed run made one (at the end of a training stage: with NCCL, a
    process that exits with its group alive gets torch's warning and may leak; gloo says nothing)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def backward(run: Run, batch: list[int]) -> torch.Tensor:
    """The global batch's loss (the same on every process), and its gradient in every parameter's `.grad`."""
    accelerator = run.accelerator
    loss = global_batch_loss(
        run.model,
        run.table,
        run.data,
        batch,
        run.loss_fn,
        accelerator.process_index,
        accelerator.num_processes,
        accelerator.device,
    )
    accelerator.backward(loss * accelerator.num_processes)  # DDP averages the processes' gradients
    return loss


def train_step(run: Run, batch: list[int]) -> torch.Tensor:
    """One optimizer step on a global batch; returns its loss, detached, on the device (reading it would wait
    for the device)."""
    loss = backward(run, batch)
    run.accelerator.clip_grad_norm_(run.model.parameters(), 1.0)
    run.optimizer.step()
    run.scheduler.step()
    run.optimizer.zero_grad()
    return loss.detach()


@dataclass
class LossWindow:
    """The losses of the steps since the last log, summed on the device, and the run's last steps' losses."""

    total: torch.Tensor | float = 0.0
    steps: int = 0
    last: deque = field(default_factory=lambda: deque(maxlen=FINAL_LOSS_STEPS))

    def add(self, loss: torch.Tensor) -> None:
        self.total = self.total + loss
        self.steps += 1
        self.last.append(loss)

    def mean(self) -> float:
        """The window's mean loss (one device sync), and a new window."""
        value = float(self.total) / self.steps
        self.total, self.steps = 0.0, 0
        return value

    def final_loss(self) -> float | None:
        return float(torch.stack(list(self.last)).double().mean()) if self.last else None


def logs_at(step: int, total: int, params: FitParams) -> bool:
    """Whether the loop logs after `step` steps: every `log_every` steps, at each checkpoint (a resumed run's
    windows then match an uninterrupted run's) and after the last step."""
    checkpoint = params.checkpoint_steps and step % params.checkpoint_steps == 0
    return step % params.log_every == 0 or bool(checkpoint) or step == total


def loop(run: Run, live_dir: Path) -> tuple[float | None, int, float]:
    """Train from the last checkpoint (if any) to the end of the schedule. Returns the mean loss of the last
    `FINAL_LOSS_STEPS` steps run, the step it resumed from and the loop's seconds."""
    from dvclive import Live
    from tqdm.auto import tqdm

    main = run.accelerator.is_main_process
    step = resumed_from = _resume(run.accelerator, run.state_dir)
    live = Live(dir=str(live_dir), resume=step > 0, dvcyaml=False, save_dvc_exp=False) if main else None
    if live is not None and step:
        _rewind_curves(live, live_dir, step)
    run.model.train()
    window = LossWindow()
    started = time.perf_counter()
    total = len(run.schedule)
    progress = tqdm(total=total, initial=step, desc="train", unit="step", disable=not main)
    while step < total:
        window.add(train_step(run, run.schedule[step]))
        step += 1
        progress.update()
        if logs_at(step, total, run.params):
            loss = window.mean()
            progress.set_postfix(loss=f"{loss:.4f}")
            if live is not None:
                live.step = step - 1  # a window is logged at its last step (steps count from 0)
                live.log_metric(LOSS_CURVE, loss)
                live.log_metric(LR_CURVE, run.scheduler.get_last_lr()[0])
                live.next_step()
        if run.params.checkpoint_steps and step % run.params.checkpoint_steps == 0 and step < total:
            _save_checkpoint(run.accelerator, run.state_dir, step)
    progress.close()
    if live is not None:
        live.end()
    return window.final_loss(), resumed_from, max(time.perf_counter() - started, 1e-9)


def summarize(run: Run, final_loss: float | None, resumed_from: int, loop_seconds: float, seconds: float) -> dict:
    return {
        "steps": len(run.schedule),
        "examples": sum(run.sources.values()),
        "texts": len(run.table.ids),
        "batch_size": run.params.batch_size,
        "processes": run.accelerator.num_processes,
        "final_loss": round(final_loss, 5) if final_loss is not None else None,
        "in_loss": run.data.kinds_trained(run.schedule),
        "seconds": round(seconds, 1),
        "samples_per_second": round(sum(map(len, run.schedule[resumed_from:])) / loop_seconds, 2),
        "device": str(run.accelerator.device),
        "resumed_from_step": resumed_from,
    }


def train(
    params: FitParams, triples: Path, output: Path, live_dir: Path, checkpoints: Path, dataset: str | None = None
) -> dict:
    """Fine-tune `params.base_model` on the triples file and save a sentence-transformers folder: the model, its
    prefixes as prompts, and sentence-transformers' model card filled with the training (`synthir.training.model_card`).
    Returns the run summary on the main process ({} on the others)."""
    started = time.perf_counter()
    run = setup(params, triples, checkpoints)
    final_loss, resumed_from, loop_seconds = loop(run, live_dir)
    run.accelerator.wait_for_everyone()
    if not run.accelerator.is_main_process:
        return {}
    summary = summarize(run, final_loss, resumed_from, loop_seconds, time.perf_counter() - started)
    save_model(run, output, dataset)
    return summary


def save_model(run: Run, output: Path, dataset: str | None) -> None:
    model = run.accelerator.unwrap_model(run.model)
    params = run.params
    merge_lora(model)
    set_prompts(model, params.query_prefix, params.passage_prefix)
    settings = computed_settings(params)
    defaults = {name: field.default for name, field in FitParams.model_fields.items()}
    describe_training(model, settings, resolve(params.base_model), dict(run.sources), dataset, defaults)
    model.save(str(output))


def write_empty_curves(live_dir: Path) -> None:
    """The curves of a run that did not happen (alignment off): DVCLive's files with a header and no steps, so
    the declared plots exist, can be committed, and `dvc plots show` draws them empty."""
    from ..fileio import atomic_file

    for curve in (LOSS_CURVE, LR_CURVE):
        with atomic_file(live_dir / "plots" / "metrics" / f"{curve}.tsv") as handle:
            handle.write(f"step\t{curve.rpartition('/')[2]}\n")


def freeze_unreachable(model, table: TokenTable) -> list[str]:
    """Freeze the parameters an embedding does not depend on (BERT's pooler, a decoder's LM head), found by one
    backward pass in eval mode (no dropout, no random numbers drawn). They never receive a gradient, so freezing
    them changes no step, and DDP then needs no per-step search for unused parameters."""
    device = next(model.parameters()).device
    model.eval()
    model(table.pad([0], device))["sentence_embedding"].sum().backward()
    frozen = [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None]
    for name, parameter in model.named_parameters():
        if name in frozen:
            parameter.requires_grad_(False)
    model.zero_grad(set_to_none=True)
    model.train()
    return frozen


def _param_groups(model, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        (no_decay if parameter.ndim < 2 or "LayerNorm" in name or "norm" in name.lower() else decay).append(parameter)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


# --- checkpoints: written whole or not at all, the last one kept ---

_PARTIAL = ".partial-"


def _checkpoints(state_dir: Path) -> list[Path]:
    found = state_dir.glob("step-*") if state_dir.exists() else []
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def _save_checkpoint(accelerator, state_dir: Path, step: int) -> None:
    """Every process writes its part into a partial folder; the main process renames it into place once all are
    done and removes the older checkpoints. A run killed mid-write leaves the previous checkpoint intact."""
    partial = state_dir / f"{_PARTIAL}step-{step}"
    if accelerator.is_main_process and partial.exists():
        shutil.rmtree(partial)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        partial.rename(state_dir / f"step-{step}")
        for older in _checkpoints(state_dir)[:-1]:
            shutil.rmtree(older)
    accelerator.wait_for_everyone()


def _resume(accelerator, state_dir: Path) -> int:
    saved = _checkpoints(state_dir)
    agreed(  # before any process loads: loading waits for the others
        accelerator,
        saved[-1].name if saved else "no checkpoint",
        "resumes from another checkpoint than process 0 (on several machines the checkpoints folder must be one "
        "shared folder, or train.checkpoint_steps 0)",
    )
    if not saved:
        return 0
    accelerator.load_state(str(saved[-1]))
    log.info("resumed from %s", saved[-1])
    return int(saved[-1].name.split("-")[1])


def _rewind_curves(live, live_dir: Path, step: int) -> None:
    """A resumed run logs from `step` again: the curves' rows from `step` on (written after the checkpoint by the
    run that died) are dropped, and DVCLive continues at `step`."""
    for curve in (LOSS_CURVE, LR_CURVE):
        path = live_dir / "plots" / "metrics" / f"{curve}.tsv"
        if path.exists():
            header, *rows = path.read_text(encoding="utf-8").splitlines(keepends=True)
            path.write_text(header + "".join(r for r in rows if int(r.split("\t")[0]) < step), encoding="utf-8")
    live.step = step
