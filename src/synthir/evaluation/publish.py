"""The publish stage: the evaluated retriever (the aligned one when align is on) as a folder users can publish, its
sentence-transformers card carrying the evaluation scores; pushed to the Hub when publish.push_to_hub is true."""

from __future__ import annotations

from pathlib import Path

from ..config import Params
from ..training.model_card import publish, push_to_hub, read_scores


def publish_stage(params: Params, model: Path, aligned: Path, scores: Path, output: Path) -> None:
    """Copy the evaluated model to `output` with the scores of the evaluate stage's metrics file `scores` in its
    card, then push it when asked and say where. `params` is the stage's (`stage_params`)."""
    found, split = read_scores(scores)
    evaluated = aligned if params.align.enabled else model
    publish(evaluated, output, found, params.dataset.name, split, params.publish.model_id)
    if params.publish.push_to_hub:
        print(f"pushed to {push_to_hub(output, params.publish.model_id)}")
