"""The align_train stage's run: the stage-1 retriever trained on the LLM's preferences (`training_params`), or,
with alignment off, a note in its place, empty curves and metrics that say so."""

from __future__ import annotations

from pathlib import Path

from ..fileio import atomic_dir, write_json
from ..training.curves import write_empty_curves
from ..training.train import train_with_metrics
from .candidates import training_params


def align_train_stage(
    params, model: str, preferences: Path, output: Path, live: Path, checkpoints: Path, metrics: Path
) -> dict:
    """align_train: `params` is the stage's view (dataset.name, align.*, the stage-1 train keys it declares).
    Returns the run summary on the main process ({} on the others, and when alignment is off)."""
    if not params.align.enabled:
        write_alignment_off(output, live, metrics)
        return {}
    settings = training_params(params.align, params.train, model)
    record = {"enabled": True}
    return train_with_metrics(settings, preferences, output, live, checkpoints, metrics, params.dataset.name, record)


def write_alignment_off(output: Path, live: Path, metrics: Path) -> None:
    """The declared outputs of an alignment that did not happen: a note as the model, the training curves with no
    steps, and metrics that say it was off."""
    with atomic_dir(output) as folder:
        (folder / "README.md").write_text("Alignment is off (align.enabled: false): evaluate scores stage 1.\n")
    write_empty_curves(live)  # the declared training curves, with no steps
    write_json(metrics, {"enabled": False})
