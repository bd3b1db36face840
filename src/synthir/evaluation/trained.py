"""The evaluate stage: the trained retriever (the aligned one when align is on) on the evaluation split, its rank
fusion with the baseline's BM25 run, and its change over the baseline."""

from __future__ import annotations

import json
from pathlib import Path

from ..config import Params
from ..fileio import write_json
from ..retrieval import Prefixes
from .evaluate import (
    METRICS,
    Evaluation,
    evaluate_dense,
    evaluate_fusion,
    per_query_record,
    read_trec_run,
    skip_unlabeled,
)


def evaluate_stage(
    params: Params,
    *,
    model: str,
    aligned: str | None,
    data: str,
    baseline: Path,
    bm25_run: Path,
    exclude: Path | None,
    output: Path,
    details: Path,
    per_query: Path,
) -> None:
    """Score the retriever and its fusion with BM25 (each saved in `details` with per-query metrics and run), the
    headline per-query scores to `per_query`, the metrics with the change over `baseline` to `output`. A split
    without qrels writes the skipped outputs. `params` is the stage's (`stage_params`)."""
    settings, stage1 = params.evaluate, params.train
    if skip_unlabeled(data, settings.split, output, per_query, details):
        return
    excluded = few_shot_ids(exclude)
    result = evaluate_dense(
        evaluated_model(model, aligned, params.align.enabled),
        data,
        settings,
        Prefixes(stage1.query_prefix, stage1.passage_prefix),
        exclude_queries=excluded,
    )
    result.save(details / "eval.json", details / "eval.per_query.json", details / "eval.run.trec")
    hybrid = evaluate_fusion("bm25+student (RRF)", [read_trec_run(bm25_run), result.run], data, settings, excluded)
    hybrid.save(details / "hybrid.json", details / "hybrid.per_query.json", details / "hybrid.run.trec")
    write_json(per_query, per_query_record({"student": result, "bm25+student": hybrid}))
    write_json(output, summary_over_baseline(result, hybrid, json.loads(baseline.read_text()).get("dense")))


def few_shot_ids(exclude: Path | None) -> set[str]:
    """The query ids to leave out (the few-shot examples shown to the generator); none without the file."""
    return set(exclude.read_text().split()) if exclude and exclude.exists() else set()


def evaluated_model(model: str, aligned: str | None, align_enabled: bool) -> str:
    """The retriever the stage scores: the aligned one when align is on and given, else the stage-1 one."""
    return aligned if align_enabled and aligned else model


def summary_over_baseline(result: Evaluation, hybrid: Evaluation, baseline: dict | None) -> dict:
    """The metrics file: the retriever's summary, its change over the baseline's dense metrics (when there are
    any), the few-shot queries left out, and the fusion's metrics."""
    summary = result.summary()
    if baseline:
        summary["delta"] = {m: round(summary[m] - baseline[m], 6) for m in METRICS}
        summary["baseline"] = {m: baseline[m] for m in METRICS}
    summary["excluded_query_ids"] = len(result.excluded)  # few-shot examples that were in this split
    summary["hybrid"] = {m: round(hybrid.metrics[m], 6) for m in METRICS}
    return summary
