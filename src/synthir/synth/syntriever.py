"""Syntriever stage 1: for each training query, a chain-of-thought expansion, a synthetic positive and a
plausible-but-irrelevant negative passage."""

from __future__ import annotations

import random

from ..beir import Qrels, Queries
from ..llm.base import Request, Sampling
from ..prompting import Template
from .parse import clean_passage
from .runner import TaskRunner, TaskStats

PARTS = ("cot", "positive", "negative")


def training_queries(queries: Queries, train_qrels: Qrels, max_queries: int, seed: int) -> list[str]:
    """Query ids of the train split (a seeded subset when `max_queries` > 0)."""
    ids = sorted(q for q, judged in train_qrels.items() if any(g > 0 for g in judged.values()))
    if 0 < max_queries < len(ids):
        ids = sorted(random.Random(seed).sample(ids, max_queries))
    return ids


def generate_sets(
    runner: TaskRunner,
    templates: dict[str, Template],
    queries: Queries,
    train_qrels: Qrels,
    query_ids: list[str],
    sampling: Sampling,
    cot_sampling: Sampling,
    domain: str,
) -> tuple[list[dict], TaskStats]:
    stats = TaskStats()
    plan = [(q, part) for q in query_ids for part in PARTS]
    requests = [
        Request(
            messages=templates[part].messages(query=queries[q], domain=domain),
            sampling=cot_sampling if part == "cot" else sampling,
        )
        for q, part in plan
    ]
    outputs: dict[str, dict] = {}
    for (query_id, part), request, result in zip(
        plan, requests, runner.run(requests, stats, "syntriever"), strict=True
    ):
        text = (
            clean_passage(result.texts[0], queries[query_id], min_words=4 if part == "cot" else 12)
            if result.texts
            else None
        )
        if text is None:
            stats.rejected += bool(result.texts)
            continue
        record = outputs.setdefault(
            query_id,
            {
                "id": query_id,
                "task": "syntriever",
                "query_id": query_id,
                "query": queries[query_id],
                "positive_doc_ids": sorted(d for d, g in train_qrels[query_id].items() if g > 0),
                "provenance": {},
            },
        )
        record[part] = text
        record["provenance"][part] = runner.provenance(templates[part], request.sampling, 0)
    records = [outputs[q] for q in query_ids if q in outputs]
    stats.records = len(records)
    return records, stats
