"""What a training run logs: DVCLive curves of the loss and the learning rate, one row per window of steps (its
mean loss, summed on the device: no device sync in between), rewound when a run resumes, and written empty for a
run that did not happen."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..config import FitParams

LOSS_CURVE, LR_CURVE = "train/loss", "train/lr"
"""The DVCLive metrics a run logs every `log_every` steps: `<live>/plots/metrics/train/{loss,lr}.tsv`."""
FINAL_LOSS_STEPS = 20
"""metrics' final_loss: the mean loss of the run's last this many steps."""


@dataclass
class LossWindow:
    """The losses of the steps since the last log, summed on the device, and the run's last steps' losses."""

    total: torch.Tensor | float = 0.0
    steps: int = 0
    last: deque = field(default_factory=lambda: deque(maxlen=FINAL_LOSS_STEPS))

    def add(self, loss: torch.Tensor) -> None:
        self.total = self.total + loss
        self.steps += 1
        self.last.append(loss)

    def mean(self) -> float:
        """The window's mean loss (one device sync), and a new window."""
        value = float(self.total) / self.steps
        self.total, self.steps = 0.0, 0
        return value

    def final_loss(self) -> float | None:
        return float(torch.stack(list(self.last)).double().mean()) if self.last else None


def logs_at(step: int, total: int, params: FitParams) -> bool:
    """Whether the loop logs after `step` steps: every `log_every` steps, at each checkpoint (a resumed run's
    windows then match an uninterrupted run's) and after the last step."""
    checkpoint = params.checkpoint_steps and step % params.checkpoint_steps == 0
    return step % params.log_every == 0 or bool(checkpoint) or step == total


def open_curves(live_dir: Path, step: int, main: bool):
    """DVCLive on the main process (None on the others), continuing at `step` when a run resumes."""
    from dvclive import Live

    if not main:
        return None
    live = Live(dir=str(live_dir), resume=step > 0, dvcyaml=False, save_dvc_exp=False)
    if step:
        rewind_curves(live, live_dir, step)
    return live


def log_curves(live, step: int, loss: float, lr: float) -> None:
    """One row of each curve: a window's mean loss and the learning rate, logged at the window's last step."""
    live.step = step - 1  # a window is logged at its last step (steps count from 0)
    live.log_metric(LOSS_CURVE, loss)
    live.log_metric(LR_CURVE, lr)
    live.next_step()


def rewind_curves(live, live_dir: Path, step: int) -> None:
    """A resumed run logs from `step` again: the curves' rows from `step` on (written after the checkpoint by the
    run that died) are dropped, and DVCLive continues at `step`."""
    for curve in (LOSS_CURVE, LR_CURVE):
        path = live_dir / "plots" / "metrics" / f"{curve}.tsv"
        if path.exists():
            header, *rows = path.read_text(encoding="utf-8").splitlines(keepends=True)
            path.write_text(header + "".join(r for r in rows if int(r.split("\t")[0]) < step), encoding="utf-8")
    live.step = step


def write_empty_curves(live_dir: Path) -> None:
    """The curves of a run that did not happen (alignment off): DVCLive's files with a header and no steps, so
    the declared plots exist, can be committed, and `dvc plots show` draws them empty."""
    from ..fileio import atomic_file

    for curve in (LOSS_CURVE, LR_CURVE):
        with atomic_file(live_dir / "plots" / "metrics" / f"{curve}.tsv") as handle:
            handle.write(f"step\t{curve.rpartition('/')[2]}\n")
