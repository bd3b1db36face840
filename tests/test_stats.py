"""Paired tests against values computed by hand and by scipy."""

import numpy as np
import pytest
from scipy import stats

from synthir.results.stats import compare, mean_over_runs, randomization_p


def test_exact_sign_flip_p_value_by_hand():
    # differences (1, 2, 3): of the 8 sign patterns, |mean| >= 2 only for +++ and ---, so p = 2/8
    p = randomization_p(np.array([1.0, 2.0, 3.0]), permutations=200_000, seed=1)
    assert p == pytest.approx(0.25, abs=0.005)


def test_identical_systems_are_not_different():
    scores = {f"q{i}": i / 10 for i in range(10)}
    result = compare(scores, scores)
    assert result.p_value == 1.0 and result.p_ttest == 1.0
    assert (result.wins, result.losses, result.ties) == (0, 0, 10)
    assert result.ci_low == result.ci_high == 0.0


def test_counts_ci_and_ttest_match_scipy():
    rng = np.random.default_rng(0)
    a = {f"q{i}": float(v) for i, v in enumerate(rng.random(200))}
    b = {q: v - 0.05 + float(rng.normal(0, 0.1)) for q, v in a.items()}
    b["q_only_b"] = 1.0  # scored by one system only: not compared
    result = compare(a, b)
    x = np.array([a[q] for q in sorted(a)])
    y = np.array([b[q] for q in sorted(a)])
    assert result.queries == 200
    assert result.difference == pytest.approx((x - y).mean())
    assert result.wins == int(((x - y) > 0).sum()) and result.wins + result.losses + result.ties == 200
    assert result.p_ttest == pytest.approx(stats.ttest_rel(x, y).pvalue)
    low, high = stats.t.interval(0.95, 199, loc=(x - y).mean(), scale=stats.sem(x - y))
    assert (result.ci_low, result.ci_high) == (pytest.approx(low), pytest.approx(high))
    assert result.p_value < 0.001  # a shift of 0.05 with noise 0.1 over 200 queries


def test_randomization_agrees_with_the_t_test_on_a_small_effect():
    rng = np.random.default_rng(3)
    a = {f"q{i}": float(v) for i, v in enumerate(rng.random(300))}
    b = {q: v + float(rng.normal(0, 0.2)) for q, v in a.items()}
    result = compare(a, b)
    assert abs(result.p_value - result.p_ttest) < 0.05


def test_too_few_common_queries():
    with pytest.raises(ValueError, match="1 queries in common"):
        compare({"a": 1.0, "b": 0.0}, {"a": 0.5})


def test_mean_over_seeds_keeps_common_queries():
    assert mean_over_runs([{"a": 1.0, "b": 0.0}, {"a": 0.0, "c": 1.0}]) == {"a": 0.5}


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), "0.5", None])
def test_a_score_that_is_not_a_finite_number_is_an_error_never_a_p_value(bad):
    a = {f"q{i}": 0.5 for i in range(10)} | {"q7": bad}
    b = {f"q{i}": 0.4 for i in range(10)}
    with pytest.raises(ValueError, match=r"^A: query 'q7' scores .*, not a finite number$"):
        compare(a, b)
