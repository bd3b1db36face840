"""Checkpoints that resume a killed run exactly: written whole or not at all by every process, the last one kept,
resumed only when every process finds the same one."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from ..config import FitParams
from .distributed import agreed

log = logging.getLogger(__name__)

_PARTIAL = ".partial-"


def saved_checkpoints(state_dir: Path) -> list[Path]:
    """The run's complete checkpoints, oldest first."""
    found = state_dir.glob("step-*") if state_dir.exists() else []
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def checkpoint_due(step: int, total: int, params: FitParams) -> bool:
    """Whether the loop saves a checkpoint after `step` steps: every `checkpoint_steps`, but not after the last."""
    return bool(params.checkpoint_steps and step % params.checkpoint_steps == 0 and step < total)


def save_checkpoint(accelerator, state_dir: Path, step: int) -> None:
    """Every process writes its part into a partial folder; the main process renames it into place once all are
    done and removes the older checkpoints. A run killed mid-write leaves the previous checkpoint intact."""
    partial = state_dir / f"{_PARTIAL}step-{step}"
    if accelerator.is_main_process and partial.exists():
        shutil.rmtree(partial)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        partial.rename(state_dir / f"step-{step}")
        for older in saved_checkpoints(state_dir)[:-1]:
            shutil.rmtree(older)
    accelerator.wait_for_everyone()


def resume(accelerator, state_dir: Path) -> int:
    """The step of the last checkpoint, its state loaded into the run (0 and nothing loaded if there is none)."""
    saved = saved_checkpoints(state_dir)
    agreed(  # before any process loads: loading waits for the others
        accelerator,
        saved[-1].name if saved else "no checkpoint",
        "resumes from another checkpoint than process 0 (on several machines the checkpoints folder must be one "
        "shared folder, or train.checkpoint_steps 0)",
    )
    if not saved:
        return 0
    accelerator.load_state(str(saved[-1]))
    log.info("resumed from %s", saved[-1])
    return int(saved[-1].name.split("-")[1])
