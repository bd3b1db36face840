"""Nested deterministic sampling (DESIGN.md §3).

A seeded permutation of the sorted corpus ids is fixed once; fraction f takes its first ceil(f*N) ids.
So 25% is a prefix of 50% is a prefix of 100%: sweeps are comparable and scaling up only adds documents.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np


def corpus_order(doc_ids: Iterable[str], seed: int) -> list[str]:
    """The seeded permutation every fraction is a prefix of (independent of input order)."""
    ids = sorted(set(doc_ids))
    order = np.random.default_rng(seed).permutation(len(ids))
    return [ids[i] for i in order]


def sample_ids(doc_ids: Iterable[str], fraction: float, seed: int) -> list[str]:
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    order = corpus_order(doc_ids, seed)
    return order[: math.ceil(fraction * len(order))]
