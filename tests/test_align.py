import random

import pytest

from synthir.align.candidates import training_queries
from synthir.align.preferences import judge_stage, parse_choice, preference_examples, preferences, sample_pairs
from synthir.config import AlignParams
from synthir.fileio import read_jsonl
from synthir.llm.base import Completion, LLMError
from synthir.llm.cached import CachedBackend
from synthir.llm.store import CompletionCache
from synthir.prompting import load_template
from synthir.triples.examples import batch_keys

from .synth.fakes import ScriptedLLM

CORPUS = {f"d{i}": {"title": "", "text": f"passage {i} {'RELEVANT' if i in (2, 3) else 'off topic'}"} for i in range(6)}
CANDIDATES = [
    {"query_id": "q1", "query": "what is it", "doc_ids": ["d0", "d2", "d1", "d3"], "scores": [0.9, 0.8, 0.7, 0.6]},
    {"query_id": "q2", "query": "and this", "doc_ids": ["d5", "d4", "d3"], "scores": [0.5, 0.4, 0.3]},
]


class PositionBiasedLLM(ScriptedLLM):
    """Test double for pairwise prompts: answers Yes whenever passage A is relevant, whatever B is, and says Yes to
    every pair in `biased` mode (a pure position bias)."""

    def __init__(self, biased: bool = False) -> None:
        super().__init__()
        self.biased = biased

    def score_yes_no(self, prompts):
        self.scored += prompts
        out = []
        for prompt in prompts:
            text = prompt[-1]["content"]
            a, b = text.split("Passage A:")[1].split("Passage B:")
            out.append(3.0 if self.biased else (1.0 if "RELEVANT" in a else 0.0) - (1.0 if "RELEVANT" in b else 0.0))
        return out


def cached(fake, tmp_path, batch_size=2) -> CachedBackend:
    return CachedBackend(fake, CompletionCache(tmp_path / "llm.sqlite"), batch_size=batch_size)


def test_sample_pairs_are_distinct_and_capped():
    rng = random.Random(0)
    assert sample_pairs(5, 10, rng) == [(i, j) for i in range(5) for j in range(i + 1, 5)]
    some = sample_pairs(6, 4, rng)
    assert len(set(some)) == 4 and all(i < j < 6 for i, j in some)


def test_training_queries_are_distinct_and_a_seeded_subset():
    examples = [{"query_id": f"q{i % 5}", "query": f"text {i % 5}", "source": "train"} for i in range(20)]
    assert training_queries(examples, ["train"], 0, 1) == {f"q{i}": f"text {i}" for i in range(5)}
    subset = training_queries(examples, ["train"], 3, 1)
    assert len(subset) == 3 and subset == training_queries(examples, ["train"], 3, 1)


def test_alignment_uses_the_labeled_training_queries_only_unless_asked():
    """Syntriever aligns its training queries; pseudo-queries join only when align.query_sources names them."""
    examples = [
        {"query_id": "q1", "query": "labeled", "source": "train"},
        {"query_id": "q2", "query": "labeled too", "source": "syntriever"},
        {"query_id": "d7-q0", "query": "pseudo", "source": "doc2query"},
    ]
    assert set(training_queries(examples, AlignParams().query_sources, 0, 1)) == {"q1", "q2"}
    assert set(training_queries(examples, ["doc2query"], 0, 1)) == {"d7-q0"}


def test_pointwise_preferences_prefer_the_relevant_passage(tmp_path):
    fake = ScriptedLLM()
    prefs, stats = preferences(
        cached(fake, tmp_path), load_template("verify_relevance"), CORPUS, CANDIDATES, "pointwise", 10, 0.0, 1
    )
    assert len(fake.scored) == 7  # each passage judged once, not once per pair
    assert stats["pairs"] == 6 + 3 and stats["decided"] == 4 + 2  # ties (both relevant / both not) are dropped
    assert {(p["preferred"], p["rejected"]) for p in prefs if p["query_id"] == "q1"} == {
        ("d2", "d0"),
        ("d2", "d1"),
        ("d3", "d0"),
        ("d3", "d1"),
    }
    assert all(p["margin"] == 4.0 for p in prefs)
    assert stats["retriever_order_kept_rate"] == pytest.approx(1 / 6, abs=1e-4)  # only d2 (rank 2) over d1 (rank 3)


def test_pairwise_keeps_only_answers_that_agree_in_both_orders(tmp_path):
    template = load_template("prefer_passage")
    prefs, stats = preferences(
        cached(PositionBiasedLLM(), tmp_path), template, CORPUS, CANDIDATES, "pairwise", 10, 0.0, 1
    )
    assert stats["agreed"] == 6 and stats["agreement_rate"] == pytest.approx(6 / 9, abs=1e-4)
    assert {p["preferred"] for p in prefs} == {"d2", "d3"}
    biased, stats = preferences(
        cached(PositionBiasedLLM(biased=True), tmp_path / "b"), template, CORPUS, CANDIDATES, "pairwise", 10, 0.0, 1
    )
    assert biased == [] and stats["agreement_rate"] == 0.0  # "A" every time: no pair survives


def test_preference_examples_keep_each_query_in_its_own_batch_slot():
    prefs = [
        {
            "query_id": "q1",
            "query": "x",
            "preferred": "d2",
            "rejected": "d0",
            "margin": 1.0,
            "preferred_rank": 2,
            "rejected_rank": 1,
        }
    ]
    (example,) = preference_examples(prefs, CORPUS)
    assert batch_keys(example) == ("query:q1", "positive:d2")
    assert example["positive_ids"] == ["d2"] and example["negative_ids"] == ["d0"]
    assert example["positives"] == ["passage 2 RELEVANT"] and example["ranks"] == [2, 1]


class CrashingLLM(PositionBiasedLLM):
    """Test double: the same judge, but it scores `budget` prompts and then raises as a killed run would."""

    def __init__(self, budget: int) -> None:
        super().__init__()
        self.budget = budget

    def score_yes_no(self, prompts):
        if len(self.scored) + len(prompts) > self.budget:
            raise RuntimeError("killed")
        return super().score_yes_no(prompts)


def test_interrupted_judging_resumes_without_repeating_finished_comparisons(tmp_path):
    params = AlignParams.model_validate(
        {"enabled": True, "method": "pairwise", "judge": {"backend": "hf", "model": "org/name"}}
    )
    out, metrics = tmp_path / "prefs.jsonl", tmp_path / "align.json"
    crashing = CrashingLLM(budget=8)
    with pytest.raises(LLMError, match="yes/no scoring failed: RuntimeError: killed"):
        judge_stage(params, CORPUS, CANDIDATES, out, metrics, backend=cached(crashing, tmp_path))
    assert not out.exists()  # nothing half-written
    resumed = PositionBiasedLLM()  # the same judge in a fresh process
    summary = judge_stage(params, CORPUS, CANDIDATES, out, metrics, backend=cached(resumed, tmp_path))
    assert len(resumed.scored) == 18 - 8  # 9 pairs x 2 orders, minus the 8 finished before the crash
    assert summary["llm"]["cache_hits"] == 8 and summary["decided"] == 6
    assert len(list(read_jsonl(out))) == 6


def test_disabled_alignment_writes_empty_outputs(tmp_path):
    summary = judge_stage(AlignParams(), CORPUS, [], tmp_path / "p.jsonl", tmp_path / "m.json")
    assert summary["enabled"] is False and (tmp_path / "p.jsonl").read_text() == ""


def test_enabled_alignment_needs_a_judge():
    with pytest.raises(ValueError, match="judge: missing"):
        AlignParams(enabled=True)


class ForcedChoiceLLM(ScriptedLLM):
    """Test double for the paper's prompt: names the passage containing RELEVANT, or "Passage #1" every time in
    `biased` mode (a pure position bias)."""

    def __init__(self, biased: bool = False) -> None:
        super().__init__()
        self.biased = biased

    def _answer(self, request):
        text = request.messages[-1]["content"]
        first, second = text.split("Passage #1:")[1].split("Passage #2:")
        relevant_second = "RELEVANT" in second.split("Based on")[0] and "RELEVANT" not in first
        choice = 1 if self.biased or not relevant_second else 2
        return Completion([f"Passage #{choice}"], tokens_in=10, tokens_out=3)


def test_parse_choice_reads_the_passage_number():
    assert parse_choice("Passage #2") == 2 and parse_choice("passage 1.") == 1 and parse_choice("#1") == 1
    assert parse_choice("Both Passage #1 and Passage #2") is None and parse_choice("neither") is None


def test_forced_choice_asks_each_pair_once_in_a_seeded_order_and_measures_position_bias(tmp_path):
    template = load_template("prefer_forced_choice")
    fake = ForcedChoiceLLM()
    args = (template, CORPUS, CANDIDATES, "forced_choice", 10, 0.0, 7)
    prefs, stats = preferences(cached(fake, tmp_path), *args, swap_check=1.0)
    bias = stats["position_bias"]
    assert bias["answers"] == 18 and bias["swap_checked"] == 9  # 9 pairs, each also asked the other way round
    relevant = {"d2", "d3"}
    mixed = [p for p in prefs if len({p["preferred"], p["rejected"]} & relevant) == 1]
    assert len(mixed) == 6 and all(p["preferred"] in relevant for p in mixed)  # wherever it was shown
    assert len(fake.requests) == 18 and all(r.sampling.temperature == 0.0 for r in fake.requests)
    again, _ = preferences(cached(ForcedChoiceLLM(), tmp_path / "again"), *args, swap_check=1.0)
    assert again == prefs  # the order is a function of the seed
    _, biased = preferences(cached(ForcedChoiceLLM(biased=True), tmp_path / "b"), *args, swap_check=1.0)
    assert biased["position_bias"]["first_position_rate"] == 1.0  # always the first shown
    assert biased["position_bias"]["swap_agreement_rate"] == 0.0  # so the two orders never agree
    once, stats = preferences(cached(ForcedChoiceLLM(), tmp_path / "once"), *args, swap_check=0.0)
    assert stats["position_bias"]["answers"] == 9 and len(once) == 9


def test_a_judge_that_always_names_the_first_passage_is_reported(tmp_path, caplog):
    params = AlignParams.model_validate(
        {"enabled": True, "method": "forced_choice", "swap_check": 1.0, "judge": {"backend": "hf", "model": "o/n"}}
    )
    out, metrics = tmp_path / "prefs.jsonl", tmp_path / "align.json"
    with caplog.at_level("WARNING"):
        summary = judge_stage(params, CORPUS, CANDIDATES, out, metrics, backend=cached(ForcedChoiceLLM(True), tmp_path))
    assert summary["position_bias"]["first_position_rate"] == 1.0
    assert "chose the first-shown passage in 100% of its answers (swap agreement 0%)" in caplog.text
