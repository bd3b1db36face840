"""triples: training examples (train split, doc2query, Syntriever sets, cropped sentences of the sampled documents)
with mined or generated negatives."""

import argparse
from pathlib import Path

from synthir.errors import friendly_errors
from synthir.models import check_reference
from synthir.stage import stage_params
from synthir.triples.build import triples_stage


@friendly_errors
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--verified", type=Path, required=True)
    parser.add_argument(
        "--sample", type=Path, required=True, help="the sampled doc ids (the cropped source's documents)"
    )
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--metrics", type=Path, required=True)
    parser.add_argument("--completions", type=Path, required=True, help="committed completions, imported first")
    args = parser.parse_args()
    params = stage_params("triples", check_model=check_reference).triples
    triples_stage(params, args.data, args.verified, args.sample, args.output, args.metrics, args.completions)


if __name__ == "__main__":
    raise SystemExit(main())
