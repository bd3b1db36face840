"""The generate stage's work: every enabled task over the sampled documents, outputs and stats."""

from __future__ import annotations

import time
from pathlib import Path

from ..beir import Dataset, has_split, load_dataset
from ..config import GenerateParams, SamplingParams
from ..errors import ConfigError, SynthirError
from ..fileio import atomic_file, write_json, write_jsonl
from ..llm.base import Sampling
from ..llm.cached import CachedBackend, open_backend
from ..llm.completions import import_committed
from ..prompting import Template, check_prompts_dir, load_template
from .doc2query import few_shot_examples, generate_queries
from .query_negative import generate_negatives
from .runner import TaskRunner, TaskStats
from .shards import Shard
from .syntriever import generate_sets, training_queries


def sampling_of(params: SamplingParams, seed: int) -> Sampling:
    return Sampling(temperature=params.temperature, top_p=params.top_p, max_tokens=params.max_tokens, seed=seed)


def generate_stage(
    params: GenerateParams, data_dir: Path, sample: Path, out_dir: Path, metrics_path: Path, completions: Path
) -> dict[str, TaskStats]:
    """The generate stage: the committed `completions` imported into the cache first, then `generate` over the
    document ids listed in `sample`."""
    doc_ids = sample.read_text(encoding="utf-8").split()
    import_committed(completions)
    return generate(params, data_dir, doc_ids, out_dir, metrics_path)


def generate(
    params: GenerateParams,
    data_dir: Path,
    doc_ids: list[str],
    out_dir: Path,
    metrics_path: Path,
    backend: CachedBackend | None = None,
) -> dict[str, TaskStats]:
    """Run doc2query, then query_negative on its queries, then syntriever; write `out_dir/<task>.jsonl`.
    Nothing is written when the stage fails."""
    started = time.perf_counter()
    dataset = _load(params, data_dir)
    backend = backend or open_backend(params.llm)
    outputs, stats, examples = synthesize(params, dataset, doc_ids, backend)
    summary = _summary(params, stats, backend, started)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, records in outputs.items():
        write_jsonl(out_dir / f"{name}.jsonl", records)
    with atomic_file(out_dir / "few_shot_ids.txt") as handle:
        handle.writelines(f"{q}\n" for q, _, _ in examples)
    write_json(metrics_path, summary)
    return stats


def generate_shard(
    params: GenerateParams, data_dir: Path, doc_ids: list[str], shard: Shard, backend: CachedBackend
) -> dict:
    """The LLM work of `generate` for the documents and training queries of `shard` only: its completions go to
    the backend's cache (nothing else is written); the summary `generate` would write, for this shard."""
    started = time.perf_counter()
    _, stats, _ = synthesize(params, _load(params, data_dir), doc_ids, backend, shard)
    return {"shard": str(shard), **_summary(params, stats, backend, started)}


def synthesize(
    params: GenerateParams,
    dataset: Dataset,
    doc_ids: list[str],
    backend: CachedBackend,
    shard: Shard | None = None,
) -> tuple[dict[str, list[dict]], dict[str, TaskStats], list]:
    """Every enabled task's records, stats and the few-shot examples; with `shard`, only for its documents and
    training queries (the requests of each are those of the whole run: few-shot examples are drawn from all)."""
    runner = TaskRunner(backend)
    stats: dict[str, TaskStats] = {}
    outputs: dict[str, list[dict]] = {}
    if shard is not None:
        doc_ids = shard.select(doc_ids)
    d2q = params.doc2query
    examples = doc2query_examples(params, dataset) if d2q.enabled else []
    if d2q.enabled:
        outputs["doc2query"], stats["doc2query"] = run_doc2query(runner, params, dataset, doc_ids, examples)
    if params.query_negative.enabled and d2q.enabled:
        outputs["query_negative"], stats["query_negative"] = run_query_negative(runner, params, outputs["doc2query"])
    if params.syntriever.enabled:
        outputs["syntriever"], stats["syntriever"] = run_syntriever(runner, params, dataset, shard)
    return outputs, stats, examples


def doc2query_examples(params: GenerateParams, dataset: Dataset) -> list:
    """The few-shot examples doc2query shows, drawn (seeded) from the labeled train queries of all the corpus."""
    d2q = params.doc2query
    return few_shot_examples(
        dataset.corpus,
        dataset.queries,
        dataset.qrels.get("train", {}),
        d2q.few_shot,
        params.seed,
        d2q.max_passage_words,
    )


def run_syntriever(
    runner: TaskRunner, params: GenerateParams, dataset: Dataset, shard: Shard | None = None
) -> tuple[list[dict], TaskStats]:
    """Syntriever's sets for the chosen training queries (those of `shard` only, when given), as `params` set it."""
    syn = params.syntriever
    query_ids = training_queries(dataset.queries, dataset.qrels["train"], syn.max_queries, params.seed)
    if shard is not None:
        query_ids = shard.select(query_ids)
    return generate_sets(
        runner,
        syntriever_templates(syn.prompts, params.prompts_dir),
        dataset.queries,
        dataset.qrels["train"],
        query_ids,
        sampling_of(syn, params.seed),
        sampling_of(syn, params.seed),
        params.domain,
    )


def syntriever_templates(prompts: str, folder: str | None) -> dict[str, Template]:
    """The cot, positive and negative templates: the authors' (`paper`, from their released code: long, detailed
    outputs) or the concise ones."""
    if prompts == "paper":
        return {
            "cot": load_template("syntriever_cot", folder),
            "positive": load_template("syntriever_positive", folder),
            "negative": load_template("syntriever_negative", folder),
        }
    return {
        "cot": load_template("syntriever_cot_concise", folder),
        "positive": load_template("syntriever_positive_concise", folder),
        "negative": load_template("syntriever_negative_concise", folder),
    }


def _summary(params: GenerateParams, stats: dict[str, TaskStats], backend: CachedBackend, started: float) -> dict:
    """The metrics of a run; a SynthirError if more requests failed than `max_failure_rate` allows."""
    requests = sum(s.requests for s in stats.values())
    failed = sum(s.failed for s in stats.values())
    if requests and failed / requests > params.max_failure_rate:
        raise SynthirError(
            f"{failed} of {requests} LLM requests failed (> generate.max_failure_rate {params.max_failure_rate}); "
            f"first error: {backend.stats.first_error}. Successful completions are cached, so a rerun retries only "
            f"the failures; nothing was written"
        )
    return {
        "tasks": {name: s.as_dict() for name, s in stats.items()},
        "llm": backend.stats.as_dict(),
        "requests": requests,
        "failed": failed,
        "seconds": round(time.perf_counter() - started, 2),
    }


def run_doc2query(
    runner: TaskRunner, params: GenerateParams, dataset: Dataset, doc_ids: list[str], examples: list
) -> tuple[list[dict], TaskStats]:
    """doc2query as `params` set it: the template of `prompts_dir`, density, deduplication, sampling."""
    d2q = params.doc2query
    return generate_queries(
        runner,
        load_template("doc2query", params.prompts_dir),
        dataset.corpus,
        doc_ids,
        examples,
        d2q.density,
        d2q.oversample,
        d2q.dedup_jaccard,
        d2q.max_passage_words,
        sampling_of(d2q, params.seed),
    )


def run_query_negative(runner: TaskRunner, params: GenerateParams, queries: list[dict]) -> tuple[list[dict], TaskStats]:
    """One generated negative per pseudo-query record, as `params` set it."""
    template = load_template("query_negative", params.prompts_dir)
    return generate_negatives(runner, template, queries, sampling_of(params.query_negative, params.seed), params.domain)


def _load(params: GenerateParams, data_dir: Path) -> Dataset:
    """The corpus, plus the labeled train split where few-shot examples or Syntriever sets need it (and the
    prompts folder checked)."""
    needs = [
        (key, value)
        for key, value in (
            ("generate.doc2query.few_shot", params.doc2query.enabled and params.doc2query.few_shot),
            ("generate.syntriever.enabled", params.syntriever.enabled),
        )
        if value
    ]
    if needs and not has_split(data_dir, "train"):
        key, value = needs[0]
        raise ConfigError(
            f"{key}: {value} needs labeled train queries, and {data_dir} has no qrels/train.tsv; for a corpus "
            f"without labels set generate.doc2query.few_shot: 0 (zero-shot) and generate.syntriever.enabled: false"
        )
    dataset = load_dataset(data_dir, ["train"] if needs else [])
    if params.prompts_dir is not None:
        check_prompts_dir(params.prompts_dir, "generate.prompts_dir")
    return dataset
