"""align_judge: the LLM's preferences over N pairs of each query's top-K, as (query, c+, c−) examples."""

import argparse
import json
from pathlib import Path

from synthir.align.preferences import align_judge_stage
from synthir.errors import friendly_errors
from synthir.models import check_reference
from synthir.stage import stage_params


@friendly_errors
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--candidates", type=Path, required=True)
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--metrics", type=Path, required=True)
    parser.add_argument("--completions", type=Path, required=True, help="committed completions, imported first")
    args = parser.parse_args()
    params = stage_params("align_judge", check_model=check_reference).align
    summary = align_judge_stage(params, args.data, args.candidates, args.output, args.metrics, args.completions)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    raise SystemExit(main())
