"""adapt: pre-adapt train.base_model to the corpus (adapt.method tsdae, GPL's first step); `train` starts from it.
Off (adapt.method none), the folder holds a note and train starts from train.base_model."""

import argparse
import json
from pathlib import Path

from synthir.errors import friendly_errors
from synthir.models import check_reference
from synthir.stage import stage_params
from synthir.training.adapt import adapt_stage


@friendly_errors
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, required=True, help="BEIR dataset folder")
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--metrics", type=Path, required=True)
    args = parser.parse_args()
    summary = adapt_stage(stage_params("adapt", check_model=check_reference), args.data, args.output, args.metrics)
    if summary:
        print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    raise SystemExit(main())
