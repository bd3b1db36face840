"""triples: training examples (train split, doc2query, Syntriever sets) with mined or generated negatives."""

import argparse
from pathlib import Path

from synthir.errors import friendly_errors
from synthir.stage import stage_params
from synthir.triples import build


@friendly_errors
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--verified", type=Path, required=True)
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--metrics", type=Path, required=True)
    args = parser.parse_args()
    build(stage_params("triples").triples, args.data, args.verified, args.output, args.metrics)


if __name__ == "__main__":
    raise SystemExit(main())
