"""Turning raw LLM text into a clean query or passage, or rejecting it (empty, echoed, a refusal)."""

from __future__ import annotations

import re

_THINK = re.compile(r"<(think|thinking|reasoning)>.*?(</\1>|$)", re.DOTALL | re.IGNORECASE)
_FENCE = re.compile(r"^```[a-zA-Z]*\s*|\s*```$")
_LABEL = re.compile(
    r"^\s*(?:[-*•]\s*|\d+[.)]\s*)?(?:\*\*)?(?:search\s+)?(?:query|question|passage|answer|expansion|"
    r"expanded query|negative passage|positive passage|output|response)(?:\s*\d+)?\s*(?:\*\*)?\s*[:：-]\s*",
    re.IGNORECASE,
)
_QUOTES = "\"'`“”‘’«»"
_REFUSAL = re.compile(r"^(i'm sorry|i am sorry|i cannot|i can't|as an ai|sorry,)", re.IGNORECASE)
_WORD = re.compile(r"\w+")
_DEICTIC = re.compile(r"\b(the|this|that) (passage|text|article|abstract|document|paper)\b", re.IGNORECASE)
"""A query that points at "the passage" cannot stand on its own."""


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _strip(text: str) -> str:
    text = _THINK.sub("", text).strip()
    text = _FENCE.sub("", text).strip()
    return text


def _unwrap(line: str) -> str:
    previous = None
    while previous != line:
        previous = line
        line = _LABEL.sub("", line).strip()
        line = line.strip("*_").strip()
        if len(line) > 1 and line[0] in _QUOTES and line[-1] in _QUOTES:
            line = line[1:-1].strip()
    return line


def is_echo(output: str, source: str) -> bool:
    """The output repeats its input: equal words, or a long verbatim run of the source."""
    out, src = words(output), words(source)
    if not out:
        return True
    if out == src[: len(out)] and len(out) >= min(len(src), 8):
        return True
    return " ".join(out) in " ".join(src) and len(out) >= 25


def clean_query(text: str, source: str, min_words: int = 3, max_words: int = 64) -> str | None:
    """The first meaningful line, unlabelled and unquoted; None when unusable."""
    lines = [_unwrap(line) for line in _strip(text).splitlines()]
    query = next((line for line in lines if line), "")
    if not query or _REFUSAL.match(query) or _DEICTIC.search(query):
        return None
    if not min_words <= len(words(query)) <= max_words:
        return None
    return None if is_echo(query, source) else query


def clean_passage(text: str, source: str, min_words: int = 12) -> str | None:
    """The whole answer as one paragraph, unlabelled; None when empty, too short, a refusal or an echo."""
    lines = [_unwrap(line) for line in _strip(text).splitlines()]
    passage = " ".join(line for line in lines if line)
    end = max(passage.rfind(". "), passage.rfind("? "), passage.rfind("! "))
    if passage and passage[-1] not in ".?!\"'" and end > 0 and len(words(passage[: end + 1])) >= min_words:
        passage = passage[: end + 1]  # cut at max_tokens: keep whole sentences
    if _REFUSAL.match(passage) or len(words(passage)) < min_words:
        return None
    return None if words(passage) == words(source) else passage


def jaccard(a: str, b: str) -> float:
    x, y = set(words(a)), set(words(b))
    return len(x & y) / len(x | y) if x | y else 1.0


def dedup(texts: list[str], threshold: float) -> list[str]:
    """Keep texts in order, dropping any whose word-set Jaccard with a kept one reaches `threshold`."""
    kept: list[str] = []
    for text in texts:
        if all(jaccard(text, other) < threshold for other in kept):
            kept.append(text)
    return kept
