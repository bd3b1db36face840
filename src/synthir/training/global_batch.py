"""One global batch's loss, the batch split across processes: `batch_size` is the examples of one optimizer step,
every one of them an in-batch negative for the others. N processes each embed a contiguous shard of it, gather
every shard's embeddings (what sentence-transformers calls gather_across_devices) and compute the global batch's
loss; DDP averages their gradients. N processes thus take the step of one process with the same batch
(tests/test_distributed.py)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .distributed import gather_rows
from .losses import BatchLoss, Margins, Slots
from .tokenized import Encoded, TokenTable


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
