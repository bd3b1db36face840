"""evaluate: the trained retriever on the evaluation split, with the change over the baseline."""

import argparse
import json
from pathlib import Path

from synthir.cli import friendly_errors
from synthir.config import load_params
from synthir.evaluate import METRICS, evaluate_dense
from synthir.fileio import write_json
from synthir.retrieval import Prefixes


@friendly_errors
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", required=True, help="the stage-1 retriever")
    parser.add_argument("--aligned", help="the aligned retriever, scored instead when align.enabled is true")
    parser.add_argument("--data", required=True)
    parser.add_argument("--baseline", type=Path, required=True)
    parser.add_argument("--exclude", type=Path, help="query ids to leave out (the few-shot examples)")
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--details", type=Path, required=True)
    args = parser.parse_args()
    params = load_params()
    ev, model = params.evaluate, params.train
    exclude = set(args.exclude.read_text().split()) if args.exclude and args.exclude.exists() else set()
    model_path = args.aligned if params.align.enabled and args.aligned else args.model
    result = evaluate_dense(
        model_path,
        args.data,
        split=ev.split,
        batch_size=ev.batch_size,
        prefixes=Prefixes(model.query_prefix, model.passage_prefix),
        depth=ev.depth,
        dtype=ev.dtype,
        search=ev.search,
        exclude_queries=exclude,
    )
    result.save(args.details / "eval.json", args.details / "eval.per_query.json", args.details / "eval.run.trec")
    baseline = json.loads(args.baseline.read_text())["dense"]
    summary = result.summary()
    summary["delta"] = {m: round(summary[m] - baseline[m], 6) for m in METRICS}
    summary["baseline"] = {m: baseline[m] for m in METRICS}
    summary["excluded_query_ids"] = len(exclude)
    write_json(args.output, summary)


if __name__ == "__main__":
    raise SystemExit(main())
