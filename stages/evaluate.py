"""evaluate: the trained retriever on the evaluation split, with the change over the baseline, and its rank
fusion with the baseline's BM25 run."""

import argparse
from pathlib import Path

from synthir.errors import friendly_errors
from synthir.evaluation.trained import evaluate_stage
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
    evaluate_stage(
        stage_params("evaluate"),
        model=args.model,
        aligned=args.aligned,
        data=args.data,
        baseline=args.baseline,
        bm25_run=args.bm25_run,
        exclude=args.exclude,
        output=args.output,
        details=args.details,
        per_query=args.per_query,
    )


if __name__ == "__main__":
    raise SystemExit(main())
