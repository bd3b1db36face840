"""publish: the evaluated retriever (aligned when align.enabled) as a folder users can publish: its
sentence-transformers card gains the evaluation scores; pushed to the Hub when publish.push_to_hub is true."""

import argparse
from pathlib import Path

from synthir.errors import friendly_errors
from synthir.evaluation.publish import publish_stage
from synthir.stage import stage_params


@friendly_errors
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", type=Path, required=True, help="the stage-1 retriever")
    parser.add_argument("--aligned", type=Path, required=True, help="the aligned retriever")
    parser.add_argument("--scores", type=Path, required=True, help="the evaluate stage's metrics")
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args()
    publish_stage(stage_params("publish"), args.model, args.aligned, args.scores, args.output)


if __name__ == "__main__":
    raise SystemExit(main())
