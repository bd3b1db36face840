"""doc2query (DAGR): `density` pseudo-queries for each sampled document, zero- or few-shot."""

from __future__ import annotations

import random

from ..beir import Corpus, Qrels, Queries, passage_text
from ..llm.base import Request, Sampling
from ..prompting import Template, truncate_words
from .parse import clean_query, dedup, words
from .runner import TaskRunner, TaskStats


def few_shot_examples(
    corpus: Corpus, queries: Queries, train_qrels: Qrels, count: int, seed: int, max_words: int
) -> list[tuple[str, str, str]]:
    """(query id, passage, query) examples from the train split only, drawn with a seed."""
    if count == 0:
        return []
    pairs = sorted((q, d) for q, judged in train_qrels.items() for d, gain in judged.items() if gain > 0)
    chosen = random.Random(seed).sample(pairs, min(count, len(pairs)))
    return [(q, truncate_words(passage_text(corpus[d]), max_words), queries[q]) for q, d in chosen]


def generate_queries(
    runner: TaskRunner,
    template: Template,
    corpus: Corpus,
    doc_ids: list[str],
    examples: list[tuple[str, str, str]],
    density: int,
    oversample: int,
    dedup_jaccard: float,
    max_words: int,
    sampling: Sampling,
) -> tuple[list[dict], TaskStats]:
    stats = TaskStats()
    shots = [({"passage": passage}, query) for _, passage, query in examples]
    passages = [truncate_words(passage_text(corpus[d]), max_words) for d in doc_ids]
    requests = [
        Request(messages=template.messages(shots, passage=p), n=density * oversample, sampling=sampling)
        for p in passages
    ]
    results = runner.run(requests, stats, "doc2query")
    few_shot_ids = [q for q, _, _ in examples]
    records = []
    for doc_id, passage, result in zip(doc_ids, passages, results, strict=True):
        parsed = [(i, clean_query(text, passage)) for i, text in enumerate(result.texts)]
        stats.rejected += sum(q is None for _, q in parsed)
        usable = [(i, q) for i, q in parsed if q]
        kept_texts = set(dedup([q for _, q in usable], dedup_jaccard))
        unique = []
        for i, query in usable:  # first sample of each kept text, in sample order
            if query in kept_texts and all(words(query) != words(u) for _, u in unique):
                unique.append((i, query))
        stats.duplicates += len(usable) - len(unique)
        for rank, (i, query) in enumerate(unique[:density]):
            provenance = runner.provenance(template, sampling, i, few_shot_ids=few_shot_ids)
            records.append(
                {
                    "id": f"{doc_id}-q{rank}",
                    "task": "doc2query",
                    "doc_id": doc_id,
                    "query": query,
                    "provenance": provenance,
                }
            )
    stats.records = len(records)
    return records, stats
