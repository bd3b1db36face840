"""Cropped-sentence pseudo-queries (DRAGON, DRAMA; the inverse cloze task of ORQA): no LLM, the whole corpus in
seconds. A query is one sentence of a document; its positive is the document with that sentence cut out, so
the pair cannot be matched by copying. The cheap baseline every LLM-written query has to beat.
"""

from __future__ import annotations

import random
import re

from ..beir import Corpus, passage_text

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9(\[])")


def sentences(text: str) -> list[str]:
    """The text split after ., ! or ? followed by a space and a capital, digit or bracket."""
    return [s.strip() for s in _SENTENCE_END.split(text) if s.strip()]


def crop_query(text: str, rng: random.Random, min_words: int, max_words: int) -> tuple[str, str] | None:
    """(query, the text without it): a random sentence of `min_words` words or more, cut to its first
    `max_words`; None when no sentence is long enough."""
    parts = sentences(text)
    eligible = [i for i, s in enumerate(parts) if len(s.split()) >= min_words]
    if not eligible or len(parts) < 2:
        return None
    i = rng.choice(eligible)
    query = " ".join(parts[i].split()[:max_words])
    return query, " ".join(parts[:i] + parts[i + 1 :])


def cropped_examples(
    corpus: Corpus,
    doc_ids: list[str],
    per_doc: int,
    min_words: int,
    max_words: int,
    remove_from_positive: bool,
    seed: int,
) -> list[dict]:
    """Up to `per_doc` distinct cropped queries per document, as training examples (`synthir.triples.build`)."""
    rng = random.Random(seed)
    examples = []
    for doc_id in doc_ids:
        doc = corpus[doc_id]
        seen: set[str] = set()
        for _ in range(per_doc * 3):  # a few retries to find distinct sentences
            cropped = crop_query(doc["text"], rng, min_words, max_words) if len(seen) < per_doc else None
            if cropped is None:
                break
            query, rest = cropped
            if query in seen:
                continue
            seen.add(query)
            body = rest if remove_from_positive else doc["text"]
            examples.append(
                {
                    "query_id": f"{doc_id}-c{len(seen) - 1}",
                    "query": query,
                    "positive_ids": [doc_id],
                    "positives": [passage_text({"title": doc.get("title", ""), "text": body})],
                    "negatives": [],
                    "negative_ids": [],
                    "source": "cropped",
                }
            )
    return examples
