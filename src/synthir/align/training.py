"""The align_train stage's run: the stage-1 retriever trained on the LLM's preferences (`training_params`), or,
with alignment off, a note in its place, empty curves and metrics that say so."""

from __future__ import annotations

from pathlib import Path

from ..config import FitParams, ScheduleParams
from ..fileio import atomic_dir, write_json
from ..training.curves import write_empty_curves
from ..training.train import train_with_metrics


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


def training_params(align, stage1, model: str):
    """The alignment run's FitParams: from the stage-1 model with the alignment loss; prefixes, device,
    precision and logging cadence as stage 1. `align` and `stage1` may be a stage's scoped view of the params:
    only their fields are read."""
    return FitParams(
        base_model=model,
        query_prefix=stage1.query_prefix,
        passage_prefix=stage1.passage_prefix,
        loss=align.loss,
        **{name: getattr(align, name) for name in ScheduleParams.model_fields},
        num_negatives=1,
        seed=align.seed,
        device=stage1.device,
        mixed_precision=stage1.mixed_precision,
        gradient_checkpointing=stage1.gradient_checkpointing,
        log_every=stage1.log_every,
    )
