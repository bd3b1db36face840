"""Preference alignment (Syntriever stage 2): the candidates and the training setup.

The stage-1 retriever ranks the corpus for each training query (`align_retrieve`); the LLM states preferences over
pairs of its top-K (`synthir.align.preferences`, `align_judge`); the (query, preferred, rejected) triples continue
training with partial Plackett–Luce or Bradley–Terry (`align_train`, through `synthir.training.train`).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

from ..beir import Corpus, load_corpus
from ..config import AlignParams, Params
from ..errors import ConfigError
from ..fileio import read_jsonl, write_jsonl


def align_retrieve_stage(params: Params, model: str, data: Path, triples: Path, output: Path) -> None:
    """The align_retrieve stage: the stage-1 `model`'s top-K candidates of the corpus in `data` for the training
    queries of `triples` that align selects, to `output` (empty when align is off). `params` is the stage's
    (`stage_params`)."""
    align, stage1 = params.align, params.train
    candidates = []
    if align.enabled:
        from ..retrieval import Prefixes, load_encoder

        queries = selected_queries(align, triples)
        candidates = retrieve_candidates(
            load_encoder(model, device=align.device, dtype=align.dtype, block="align"),
            load_corpus(data / "corpus.jsonl"),
            queries,
            align.k,
            align.encode_batch_size,
            Prefixes(stage1.query_prefix, stage1.passage_prefix),
        )
    write_jsonl(output, candidates)


def selected_queries(align: AlignParams, triples: Path) -> dict[str, str]:
    """`training_queries` of the examples in `triples` as `align` selects them; a ConfigError when none is."""
    examples = list(read_jsonl(triples))
    queries = training_queries(examples, align.query_sources, align.max_queries, align.seed)
    if not queries:
        present = sorted({e.get("source") for e in examples})
        raise ConfigError(
            f"align.query_sources: {align.query_sources} selects no query of {triples} (its sources: "
            f"{present}); add doc2query to align on pseudo-queries"
        )
    return queries


def training_queries(examples: Sequence[dict], sources: Sequence[str], max_queries: int, seed: int) -> dict[str, str]:
    """Distinct (query id → text) of the training examples from `sources` (Syntriever aligns the labeled training
    queries: train, syntriever); a seeded subset when `max_queries` > 0."""
    queries: dict[str, str] = {}
    for example in examples:
        if example.get("source") in sources:
            queries.setdefault(example["query_id"], example["query"])
    if 0 < max_queries < len(queries):
        chosen = set(random.Random(seed).sample(sorted(queries), max_queries))
        queries = {q: t for q, t in queries.items() if q in chosen}
    return queries


def retrieve_candidates(
    model, corpus: Corpus, queries: dict[str, str], k: int, batch_size: int, prefixes
) -> list[dict]:
    """The model's top-k documents for each query, best first."""
    from ..retrieval import dense_search

    run = dense_search(model, corpus, queries, depth=k, batch_size=batch_size, prefixes=prefixes)
    records = []
    for query_id, text in queries.items():
        hits = sorted(run.get(query_id, {}).items(), key=lambda hit: (-hit[1], hit[0]))[:k]
        records.append(
            {
                "query_id": query_id,
                "query": text,
                "doc_ids": [d for d, _ in hits],
                "scores": [round(s, 6) for _, s in hits],
            }
        )
    return records
