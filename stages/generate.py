"""generate: LLM synthesis (doc2query, query_negative, syntriever) over the sampled documents."""

import argparse
from pathlib import Path

from synthir.errors import friendly_errors
from synthir.models import check_reference
from synthir.stage import stage_params
from synthir.synth.pipeline import generate_stage


@friendly_errors
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--sample", type=Path, required=True)
    parser.add_argument("--output", type=Path, required=True, help="folder for <task>.jsonl")
    parser.add_argument("--metrics", type=Path, required=True)
    parser.add_argument("--completions", type=Path, required=True, help="committed completions, imported first")
    args = parser.parse_args()
    generate_stage(
        stage_params("generate", check_model=check_reference).generate,
        args.data,
        args.sample,
        args.output,
        args.metrics,
        args.completions,
    )


if __name__ == "__main__":
    raise SystemExit(main())
