"""sample: the nested, seeded fraction of the corpus that generation works on (random, or diverse: spread over
k-means clusters of the base retriever's embeddings)."""

import argparse

from synthir.data.sample import sample_stage
from synthir.errors import friendly_errors
from synthir.models import check_reference
from synthir.stage import stage_params


@friendly_errors
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", required=True)
    parser.add_argument("--output", required=True)
    args = parser.parse_args()
    sample_stage(stage_params("sample", check_model=check_reference).sample, args.data, args.output)


if __name__ == "__main__":
    raise SystemExit(main())
