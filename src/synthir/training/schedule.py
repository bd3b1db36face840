"""The whole step schedule, built before the first step: length-bucketed batches whose examples share no query
and no positive (an in-batch false negative), epoch after epoch, each epoch shuffled by its own seed."""

from __future__ import annotations

import random

from .tokenized import Encoded, TokenTable


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
