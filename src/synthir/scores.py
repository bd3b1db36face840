"""What a retrieval score is, wherever one is read back: a metric named like `ndcg@10`, a number in [0, 1]."""

from __future__ import annotations

import re

from .errors import DataError, excerpt

METRIC_NAME = re.compile(r"[a-z_]+@\d+")
"""A metric's name as the metrics files key it (`ndcg@10`, `recall@100`); match with `fullmatch`."""


def check_score(value: object, where: str, low: float = 0.0) -> float:
    """A score: a number in [`low`, 1] (`low` -1 for a difference of scores); DataError naming `where` otherwise
    (NaN, inf, text, true)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= 1:
        raise DataError(f"{where} is {excerpt(value)}; a score is a number in [{low:g}, 1]")
    return float(value)
