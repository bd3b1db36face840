"""Paired significance over per-query scores: does system A beat system B on the same queries?

The test is a two-sided paired randomization (sign-flip) test: under the null hypothesis each query's difference
is as likely to have either sign, so the observed mean difference is compared with the means of many random
sign flips (Smucker, Allan and Carterette, CIKM 2007, recommend it for IR). The paired t-test's p-value and
the t confidence interval of the mean difference are given beside it.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from ..errors import excerpt

PERMUTATIONS = 10_000


@dataclass(frozen=True)
class Comparison:
    """A minus B over the queries both systems scored."""

    queries: int
    mean_a: float
    mean_b: float
    wins: int
    losses: int
    ties: int
    ci_low: float
    ci_high: float
    p_value: float
    """Two-sided paired randomization test."""
    p_ttest: float
    confidence: float

    @property
    def difference(self) -> float:
        return self.mean_a - self.mean_b


def randomization_p(differences: np.ndarray, permutations: int = PERMUTATIONS, seed: int = 0) -> float:
    """Two-sided sign-flip p-value of the mean difference, counting the observed assignment among the
    permutations ((hits + 1) / (permutations + 1)), so it is never 0."""
    observed = abs(differences.mean())
    if not differences.any():
        return 1.0
    rng = np.random.default_rng(seed)
    hits = 0
    for start in range(0, permutations, 1000):  # blocks bound the memory: 1000 x queries signs at a time
        signs = rng.choice((-1.0, 1.0), size=(min(1000, permutations - start), len(differences)))
        hits += int((np.abs(signs @ differences) / len(differences) >= observed - 1e-12).sum())
    return (hits + 1) / (permutations + 1)


def _finite(scores: Mapping[str, float], queries: list[str], name: str) -> np.ndarray:
    for query in queries:
        value = scores[query]
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
            raise ValueError(f"{name}: query {excerpt(query)} scores {excerpt(value)}, not a finite number")
    return np.array([scores[q] for q in queries], dtype=np.float64)


def compare(
    a: Mapping[str, float],
    b: Mapping[str, float],
    permutations: int = PERMUTATIONS,
    seed: int = 0,
    confidence: float = 0.95,
) -> Comparison:
    """Paired comparison of two systems' per-query scores over the queries both have; a score that is not a finite
    number is a ValueError naming the query, never a p-value."""
    from scipy import stats

    common = sorted(a.keys() & b.keys())
    if len(common) < 2:
        raise ValueError(f"{len(common)} queries in common: a paired test needs at least 2")
    x, y = _finite(a, common, "A"), _finite(b, common, "B")
    diff = x - y
    n = len(diff)
    spread = diff.std(ddof=1) / np.sqrt(n)
    if spread > 0:
        half = float(stats.t.ppf(0.5 + confidence / 2, n - 1) * spread)
        p_t = float(stats.ttest_rel(x, y).pvalue)
    else:
        half, p_t = 0.0, 1.0 if diff.mean() == 0 else 0.0
    mean = float(diff.mean())
    return Comparison(
        queries=n,
        mean_a=float(x.mean()),
        mean_b=float(y.mean()),
        wins=int((diff > 0).sum()),
        losses=int((diff < 0).sum()),
        ties=int((diff == 0).sum()),
        ci_low=mean - half,
        ci_high=mean + half,
        p_value=randomization_p(diff, permutations, seed),
        p_ttest=p_t,
        confidence=confidence,
    )


def mean_over_runs(runs: list[Mapping[str, float]]) -> dict[str, float]:
    """Each query's score averaged over several runs (seeds) of one configuration, over the queries all have:
    the per-query scores a configuration is compared with."""
    common = set.intersection(*(set(run) for run in runs)) if runs else set()
    return {q: float(np.mean([run[q] for run in runs])) for q in sorted(common)}
