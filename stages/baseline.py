"""baseline: the untrained base model, BM25 and their rank fusion (the strongest label-free system of the same
parts) on the evaluation split: the numbers training must beat."""

import argparse

from synthir.errors import friendly_errors
from synthir.evaluation.baseline import baseline_stage
from synthir.models import check_reference
from synthir.stage import stage_params


@friendly_errors
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", required=True)
    parser.add_argument("--output", required=True, help="metrics JSON")
    parser.add_argument("--details", required=True, help="folder for runs and per-query metrics")
    parser.add_argument("--per-query", required=True, help="JSON of the headline per-query scores (committed)")
    args = parser.parse_args()
    baseline_stage(
        stage_params("baseline", check_model=check_reference),
        data=args.data,
        output=args.output,
        details=args.details,
        per_query=args.per_query,
    )


if __name__ == "__main__":
    raise SystemExit(main())
