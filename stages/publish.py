"""publish: the evaluated retriever (aligned when align.enabled) as a folder users can publish: its
sentence-transformers card gains the evaluation scores; pushed to the Hub when publish.push_to_hub is true."""

import argparse
from pathlib import Path

from synthir.errors import friendly_errors
from synthir.stage import stage_params
from synthir.training.model_card import publish, push_to_hub, read_scores


@friendly_errors
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", type=Path, required=True, help="the stage-1 retriever")
    parser.add_argument("--aligned", type=Path, required=True, help="the aligned retriever")
    parser.add_argument("--scores", type=Path, required=True, help="the evaluate stage's metrics")
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args()
    params = stage_params("publish")
    scores, split = read_scores(args.scores)
    model = args.aligned if params.align.enabled else args.model
    publish(model, args.output, scores, params.dataset.name, split, params.publish.model_id)
    if params.publish.push_to_hub:
        print(f"pushed to {push_to_hub(args.output, params.publish.model_id)}")


if __name__ == "__main__":
    raise SystemExit(main())
