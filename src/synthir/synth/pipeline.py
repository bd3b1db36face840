"""The generate stage's work: every enabled task over the sampled documents, outputs and stats."""

from __future__ import annotations

import time
from pathlib import Path

from ..beir import load_dataset
from ..config import GenerateParams, LLMParams, SamplingParams
from ..errors import SynthirError
from ..fileio import atomic_file, write_json, write_jsonl
from ..llm import CachedBackend, Sampling
from ..llm.cache import open_backend
from ..prompting import load_template
from .doc2query import few_shot_examples, generate_queries
from .query_negative import generate_negatives
from .runner import TaskRunner, TaskStats
from .syntriever import PARTS, generate_sets, training_queries


def connect(llm: LLMParams, cache_path: str | Path | None = None) -> CachedBackend:
    return open_backend(
        llm.backend,
        llm.model,
        dict(llm.options),
        llm.batch_size,
        cache_path,
        base_url=llm.base_url,
        api_key_env=llm.api_key_env,
    )


def sampling_of(params: SamplingParams, seed: int) -> Sampling:
    return Sampling(temperature=params.temperature, top_p=params.top_p, max_tokens=params.max_tokens, seed=seed)


def generate(
    params: GenerateParams,
    data_dir: Path,
    doc_ids: list[str],
    out_dir: Path,
    metrics_path: Path,
    backend: CachedBackend | None = None,
) -> dict[str, TaskStats]:
    """Run doc2query, then query_negative on its queries, then syntriever; write `out_dir/<task>.jsonl`."""
    started = time.perf_counter()
    dataset = load_dataset(data_dir, ["train"] if needs_train(params) else [])
    backend = backend or connect(params.llm)
    runner = TaskRunner(backend, params.llm.backend)
    template = lambda name: load_template(name, params.prompts_dir)  # noqa: E731
    stats: dict[str, TaskStats] = {}
    outputs: dict[str, list[dict]] = {}

    d2q = params.doc2query
    examples = few_shot_examples(
        dataset.corpus,
        dataset.queries,
        dataset.qrels.get("train", {}),
        d2q.few_shot,
        params.seed,
        d2q.max_passage_words,
    )
    outputs["doc2query"], stats["doc2query"] = generate_queries(
        runner,
        template("doc2query"),
        dataset.corpus,
        doc_ids,
        examples,
        d2q.density,
        d2q.oversample,
        d2q.dedup_jaccard,
        d2q.max_passage_words,
        sampling_of(d2q, params.seed),
    )
    if params.query_negative.enabled:
        outputs["query_negative"], stats["query_negative"] = generate_negatives(
            runner, template("query_negative"), outputs["doc2query"], sampling_of(params.query_negative, params.seed)
        )
    if params.syntriever.enabled:
        syn = params.syntriever
        query_ids = training_queries(dataset.queries, dataset.qrels["train"], syn.max_queries, params.seed)
        templates = {part: template(f"syntriever_{part}") for part in PARTS}
        outputs["syntriever"], stats["syntriever"] = generate_sets(
            runner,
            templates,
            dataset.queries,
            dataset.qrels["train"],
            query_ids,
            sampling_of(syn, params.seed),
            sampling_of(syn, params.seed),
        )

    requests = sum(s.requests for s in stats.values())
    failed = sum(s.failed for s in stats.values())
    summary = {
        "tasks": {name: s.as_dict() for name, s in stats.items()},
        "llm": backend.stats.as_dict(),
        "requests": requests,
        "failed": failed,
        "seconds": round(time.perf_counter() - started, 2),
    }
    if requests and failed / requests > params.max_failure_rate:
        write_json(metrics_path, summary)
        raise SynthirError(
            f"{failed} of {requests} LLM requests failed (> generate.max_failure_rate {params.max_failure_rate}); "
            f"successful completions are cached, so a rerun retries only the failures"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, records in outputs.items():
        write_jsonl(out_dir / f"{name}.jsonl", records)
    with atomic_file(out_dir / "few_shot_ids.txt") as handle:
        handle.writelines(f"{q}\n" for q, _, _ in examples)
    write_json(metrics_path, summary)
    return stats


def needs_train(params: GenerateParams) -> bool:
    return params.doc2query.few_shot > 0 or params.syntriever.enabled
