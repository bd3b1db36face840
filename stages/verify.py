"""verify: LLM self-verification (relabel), pointwise relevance scores, round-trip filter."""

import argparse
from pathlib import Path

from synthir.errors import friendly_errors
from synthir.models import check_reference
from synthir.stage import stage_params
from synthir.synth.verify import verify_stage


@friendly_errors
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--generated", type=Path, required=True)
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--metrics", type=Path, required=True)
    parser.add_argument("--completions", type=Path, required=True, help="committed completions, imported first")
    args = parser.parse_args()
    params = stage_params("verify", check_model=check_reference).verify
    verify_stage(params, args.data, args.generated, args.output, args.metrics, args.completions)


if __name__ == "__main__":
    raise SystemExit(main())
