"""The relevance judge: its prompts, log-odds scores through the cache, and greedy answers without log-probs."""

from __future__ import annotations

import logging

from synthir.llm.base import Completion, Request
from synthir.llm.cached import CachedBackend
from synthir.llm.judge import RelevanceJudge, score_prompts
from synthir.llm.store import CompletionCache
from synthir.prompting import load_template

PAIRS = [("what is x", "RELEVANT: x is a letter"), ("what is x", "nothing to see"), ("q", "unsure")]


class YesNoLLM:
    """Test double: log-odds +2 for a passage that says RELEVANT, else −2; every scored prompt recorded."""

    model_id = "fake/judge"

    def __init__(self) -> None:
        self.scored: list = []

    def generate(self, requests: list[Request]) -> list[Completion]:
        raise AssertionError("a backend with log-probs is never asked to generate")

    def score_yes_no(self, prompts):
        self.scored += prompts
        return [2.0 if "RELEVANT" in p[-1]["content"] else -2.0 for p in prompts]


class AnsweringLLM:
    """Test double without log-probs: answers "Yes." to a RELEVANT passage, "no" to a plain one, else a shrug."""

    model_id = "fake/answers"

    def generate(self, requests: list[Request]) -> list[Completion]:
        def answer(text: str) -> str:
            return "Yes." if "RELEVANT" in text else "Maybe" if "unsure" in text else "no"

        return [Completion([answer(r.messages[-1]["content"])], 1, 1) for r in requests]


def cached(fake, tmp_path) -> CachedBackend:
    return CachedBackend(fake, CompletionCache(tmp_path / "llm.sqlite"), batch_size=2)


def test_the_judge_asks_the_relevance_question_with_passages_cut_to_max_words(tmp_path):
    judge = RelevanceJudge(cached(YesNoLLM(), tmp_path), max_words=3)
    template = load_template("verify_relevance")
    assert judge.template == template
    assert judge.prompts([("q", "one two three four")]) == [template.messages(query="q", passage="one two three ...")]


def test_scores_are_yes_no_log_odds_served_from_the_cache_on_a_rerun(tmp_path):
    llm = YesNoLLM()
    judge = RelevanceJudge(cached(llm, tmp_path))
    assert judge.score(PAIRS) == [2.0, -2.0, -2.0] == judge(PAIRS)  # calling the judge scores pairs
    assert len(llm.scored) == 3 and judge.backend.stats.cache_hits == 3  # the second pass made no call


def test_another_question_shares_the_backend(tmp_path):
    judge = RelevanceJudge(cached(YesNoLLM(), tmp_path), desc="teacher")
    other = judge.asking(load_template("relabel_relevant"))
    assert other.backend is judge.backend and other.desc == "teacher"
    assert other.prompts(PAIRS[:1]) != judge.prompts(PAIRS[:1])


def test_without_log_probs_the_greedy_answer_scores_plus_or_minus_one(tmp_path, caplog):
    judge = RelevanceJudge(cached(AnsweringLLM(), tmp_path))
    with caplog.at_level(logging.WARNING, logger="synthir.llm.judge"):
        assert judge.score(PAIRS) == [1.0, -1.0, 0.0]
    assert "cannot score yes/no (no log-probs); judging from generated answers instead" in caplog.text
    assert score_prompts(judge.backend, []) == []
