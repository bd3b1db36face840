"""The LLM relevance judge: how relevant a passage is to a query, as the log-odds of a yes/no answer.

Every phase that asks an LLM "is this passage relevant?" asks it here: verify (Syntriever's self-verification,
pointwise scores, Gecko's relabeling), triples (the LLM's score as an offline cross-encoder, the llm teacher) and
align (pointwise preferences; its pairwise questions use `score_prompts`). Every judgement goes through the
completion cache.
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING

from ..prompting import Template, load_template, truncate_words
from .base import Request, Sampling, UnsupportedError
from .cached import CachedBackend, open_backend
from .progress import LLMProgress

if TYPE_CHECKING:
    from ..config import LLMParams

log = logging.getLogger(__name__)

YES_OR_NO = re.compile(r"\b(yes|no)\b", re.IGNORECASE)
"""The first yes or no of a greedy answer: what the judge said when the backend gives no log-probs."""


def relevance_template() -> Template:
    """The judge's question: is this passage relevant to this query? (yes / no)"""
    return load_template("verify_relevance")


def score_prompts(backend: CachedBackend, prompts: list, desc: str = "judge") -> list[float]:
    """log P(yes) − log P(no) of each yes/no prompt (cached, committed batch by batch), else ±1 / 0 from a greedy
    one-word answer when the backend gives no log-probs."""
    if not prompts:
        return []
    try:
        return log_odds(backend, prompts, desc)
    except UnsupportedError as error:
        log.warning("%s; judging from generated answers instead", error)
    return answered(backend, prompts)


def log_odds(backend: CachedBackend, prompts: list, desc: str) -> list[float]:
    """log P(yes) − log P(no) of each prompt, scored batch by batch under a progress bar."""
    step = getattr(backend, "batch_size", 16)
    scores: list[float] = []
    with LLMProgress(backend, len(prompts), desc, unit="prompt") as progress:
        for start in range(0, len(prompts), step):
            scores += backend.score_yes_no(prompts[start : start + step])
            progress.advance(len(prompts[start : start + step]))
    return scores


def answered(backend: CachedBackend, prompts: list) -> list[float]:
    """+1 for a greedy answer that says yes, −1 for no, 0 for neither."""
    sampling = Sampling(temperature=0.0, max_tokens=4)
    results = backend.generate([Request(messages=m, sampling=sampling) for m in prompts])
    scores = []
    for result in results:
        match = YES_OR_NO.search(result.texts[0]) if result.texts else None
        scores.append(0.0 if match is None else 1.0 if match.group(1).lower() == "yes" else -1.0)
    return scores


class RelevanceJudge:
    """Scores (query, passage) pairs: log P(yes) − log P(no) of the template's question where the backend gives
    log-probs, else +1 / −1 from a greedy one-word answer (0 when it says neither). Passages are cut to
    `max_words`; `desc` names the progress bar. Calling the judge scores pairs, as a cross-encoder does."""

    def __init__(
        self, backend: CachedBackend, template: Template | None = None, max_words: int = 180, desc: str = "judge"
    ) -> None:
        self.backend = backend
        self.template = template or relevance_template()
        self.max_words = max_words
        self.desc = desc

    @classmethod
    def open(cls, llm: LLMParams, desc: str = "judge") -> RelevanceJudge:
        """The judge an `llm` params block (`verify.judge`, `triples.teacher.judge`, ...) names."""
        return cls(open_backend(llm), desc=desc)

    def asking(self, template: Template) -> RelevanceJudge:
        """The same judge (backend, cache, counters) asking another yes/no question."""
        return RelevanceJudge(self.backend, template, self.max_words, self.desc)

    def prompts(self, pairs: list[tuple[str, str]]) -> list[list[dict[str, str]]]:
        """The chat prompt of each (query, passage)."""
        return [self.template.messages(query=q, passage=truncate_words(p, self.max_words)) for q, p in pairs]

    def score(self, pairs: list[tuple[str, str]], desc: str | None = None) -> list[float]:
        """Relevance of each (query, passage); `desc` names this call's progress bar instead of the judge's."""
        return score_prompts(self.backend, self.prompts(pairs), desc or self.desc)

    def __call__(self, pairs: list[tuple[str, str]]) -> list[float]:
        return self.score(pairs)
