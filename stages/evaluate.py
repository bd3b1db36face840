"""evaluate: the trained retriever on the evaluation split, with the change over the baseline, and its rank
fusion with the baseline's BM25 run."""

import argparse
import json
from pathlib import Path

from synthir.errors import friendly_errors
from synthir.evaluation.evaluate import (
    METRICS,
    evaluate_dense,
    evaluate_fusion,
    per_query_record,
    read_trec_run,
    skipped,
)
from synthir.fileio import write_json
from synthir.retrieval import Prefixes
from synthir.stage import stage_params


@friendly_errors
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", required=True, help="the stage-1 retriever")
    parser.add_argument("--aligned", help="the aligned retriever, scored instead when align.enabled is true")
    parser.add_argument("--data", required=True)
    parser.add_argument("--baseline", type=Path, required=True)
    parser.add_argument("--bm25-run", type=Path, required=True, help="the baseline's BM25 run, fused with the model's")
    parser.add_argument("--exclude", type=Path, help="query ids to leave out (the few-shot examples)")
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--details", type=Path, required=True)
    parser.add_argument("--per-query", type=Path, required=True, help="JSON of the headline per-query scores")
    args = parser.parse_args()
    params = stage_params("evaluate")
    settings, stage1 = params.evaluate, params.train
    nothing = skipped(args.data, settings.split)
    if nothing:
        args.details.mkdir(parents=True, exist_ok=True)
        write_json(args.per_query, per_query_record({}, settings.split))
        write_json(args.output, nothing)
        return
    exclude = set(args.exclude.read_text().split()) if args.exclude and args.exclude.exists() else set()
    model_path = args.aligned if params.align.enabled and args.aligned else args.model
    result = evaluate_dense(
        model_path,
        args.data,
        settings,
        Prefixes(stage1.query_prefix, stage1.passage_prefix),
        exclude_queries=exclude,
    )
    result.save(args.details / "eval.json", args.details / "eval.per_query.json", args.details / "eval.run.trec")
    hybrid = evaluate_fusion(
        "bm25+student (RRF)", [read_trec_run(args.bm25_run), result.run], args.data, settings, exclude
    )
    hybrid.save(args.details / "hybrid.json", args.details / "hybrid.per_query.json", args.details / "hybrid.run.trec")
    write_json(args.per_query, per_query_record({"student": result, "bm25+student": hybrid}))
    summary = result.summary()
    baseline = json.loads(args.baseline.read_text()).get("dense")
    if baseline:
        summary["delta"] = {m: round(summary[m] - baseline[m], 6) for m in METRICS}
        summary["baseline"] = {m: baseline[m] for m in METRICS}
    summary["excluded_query_ids"] = len(result.excluded)  # few-shot examples that were in this split
    summary["hybrid"] = {m: round(hybrid.metrics[m], 6) for m in METRICS}
    write_json(args.output, summary)


if __name__ == "__main__":
    raise SystemExit(main())
