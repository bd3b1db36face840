"""query_negative (Don't Retrieve, Generate): a hard negative passage written from the query alone."""

from __future__ import annotations

from ..llm.base import Request, Sampling
from ..prompting import Template
from .parse import clean_passage
from .runner import TaskRunner, TaskStats


def generate_negatives(
    runner: TaskRunner, template: Template, queries: list[dict], sampling: Sampling, domain: str
) -> tuple[list[dict], TaskStats]:
    """One negative per pseudo-query record (`id`, `query`, `doc_id`), written as `domain` reads."""
    stats = TaskStats()
    requests = [
        Request(messages=template.messages(query=q["query"], domain=domain), sampling=sampling) for q in queries
    ]
    records = []
    for query, result in zip(queries, runner.run(requests, stats, "query_negative"), strict=True):
        negative = clean_passage(result.texts[0], query["query"]) if result.texts else None
        if negative is None:
            stats.rejected += bool(result.texts)
            continue
        records.append(
            {
                "id": f"{query['id']}-neg",
                "task": "query_negative",
                "query_id": query["id"],
                "query": query["query"],
                "doc_id": query["doc_id"],
                "negative": negative,
                "provenance": runner.provenance(template, sampling, 0),
            }
        )
    stats.records = len(records)
    return records, stats
