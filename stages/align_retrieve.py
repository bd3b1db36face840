"""align_retrieve: the stage-1 retriever's top-K passages for each training query (empty when align is off)."""

import argparse
from pathlib import Path

from synthir.align.candidates import align_retrieve_stage
from synthir.errors import friendly_errors
from synthir.stage import stage_params


@friendly_errors
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--triples", type=Path, required=True)
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args()
    align_retrieve_stage(stage_params("align_retrieve"), args.model, args.data, args.triples, args.output)


if __name__ == "__main__":
    raise SystemExit(main())
