"""Training a sentence-transformers retriever with accelerate, on one process or several: the loop; `train`, one
run; `train_stage`, the train stage (params to model and metrics).

Every text is tokenized once (`synthir.training.tokenized`); the whole step schedule is built before the first
step (`synthir.training.schedule`); each step's loss is the global batch's, however many processes share it
(`synthir.training.global_batch`). The hot loop does no per-sample Python work. DVCLive logs loss and learning rate
every `log_every` steps (`synthir.training.curves`); checkpoints resume a killed run exactly
(`synthir.training.checkpoints`).
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from ..backbones import merge_lora
from ..config import FitParams
from ..fileio import write_json
from ..models import resolve
from .builders import PreparedTraining, computed_settings, setup
from .checkpoints import checkpoint_due, resume, save_checkpoint
from .curves import LossWindow, log_curves, logs_at, open_curves
from .distributed import end_distributed
from .global_batch import global_batch_loss
from .model_card import describe_training, set_prompts


def train_stage(
    params, triples: Path, adapted: Path, output: Path, live: Path, checkpoints: Path, metrics: Path
) -> dict:
    """The train stage: train.* on the triples, from the adapt stage's encoder when adapt is on (`params` is the
    stage's view: dataset.name, adapt.method, train). Returns the run summary on the main process ({} on the
    others), which writes it as the metrics."""
    settings = params.train
    if params.adapt.method != "none":  # start from the corpus-adapted encoder
        settings = settings.model_copy(update={"base_model": str(adapted)})
    return train_with_metrics(settings, triples, output, live, checkpoints, metrics, params.dataset.name)


def train_with_metrics(
    params: FitParams,
    triples: Path,
    output: Path,
    live_dir: Path,
    checkpoints: Path,
    metrics: Path,
    dataset: str | None,
    record: dict | None = None,
) -> dict:
    """`train`, then the end of the process group (as a training stage ends); the main process writes `record`
    and the run summary as the metrics. Returns the summary ({} on the other processes)."""
    summary = train(params, triples, output, live_dir, checkpoints, dataset)
    end_distributed()
    if summary:  # the main process
        write_json(metrics, {**(record or {}), **summary})
    return summary


def train(
    params: FitParams, triples: Path, output: Path, live_dir: Path, checkpoints: Path, dataset: str | None = None
) -> dict:
    """Fine-tune `params.base_model` on the triples file and save a sentence-transformers folder: the model, its
    prefixes as prompts, and sentence-transformers' model card filled with the training (`synthir.training.model_card`).
    Returns the run summary on the main process ({} on the others)."""
    started = time.perf_counter()
    run = setup(params, triples, checkpoints)
    final_loss, resumed_from, loop_seconds = loop(run, live_dir)
    run.accelerator.wait_for_everyone()
    if not run.accelerator.is_main_process:
        return {}
    summary = summarize(run, final_loss, resumed_from, loop_seconds, time.perf_counter() - started)
    save_model(run, output, dataset)
    return summary


def backward(run: PreparedTraining, batch: list[int]) -> torch.Tensor:
    """The global batch's loss (the same on every process), and its gradient in every parameter's `.grad`."""
    accelerator = run.accelerator
    loss = global_batch_loss(
        run.model,
        run.table,
        run.data,
        batch,
        run.loss_fn,
        accelerator.process_index,
        accelerator.num_processes,
        accelerator.device,
    )
    accelerator.backward(loss * accelerator.num_processes)  # DDP averages the processes' gradients
    return loss


def train_step(run: PreparedTraining, batch: list[int]) -> torch.Tensor:
    """One optimizer step on a global batch; returns its loss, detached, on the device (reading it would wait
    for the device)."""
    loss = backward(run, batch)
    run.accelerator.clip_grad_norm_(run.model.parameters(), 1.0)
    run.optimizer.step()
    run.scheduler.step()
    run.optimizer.zero_grad()
    return loss.detach()


def loop(run: PreparedTraining, live_dir: Path) -> tuple[float | None, int, float]:
    """Train from the last checkpoint (if any) to the end of the schedule. Returns the mean loss of the last
    `FINAL_LOSS_STEPS` steps run, the step it resumed from and the loop's seconds."""
    from tqdm.auto import tqdm

    main = run.accelerator.is_main_process
    step = resumed_from = resume(run.accelerator, run.state_dir)
    live = open_curves(live_dir, step, main)
    run.model.train()
    window = LossWindow()
    started = time.perf_counter()
    total = len(run.schedule)
    progress = tqdm(total=total, initial=step, desc="train", unit="step", disable=not main)
    while step < total:
        window.add(train_step(run, run.schedule[step]))
        step += 1
        progress.update()
        if logs_at(step, total, run.params):
            log_window(run, window, progress, live, step)
        if checkpoint_due(step, total, run.params):
            save_checkpoint(run.accelerator, run.state_dir, step)
    progress.close()
    if live is not None:
        live.end()
    return window.final_loss(), resumed_from, max(time.perf_counter() - started, 1e-9)


def log_window(run: PreparedTraining, window: LossWindow, progress, live, step: int) -> None:
    """The window's mean loss on the progress bar and, on the main process, in the curves; a new window."""
    loss = window.mean()
    progress.set_postfix(loss=f"{loss:.4f}")
    if live is not None:
        log_curves(live, step, loss, run.scheduler.get_last_lr()[0])


def summarize(
    run: PreparedTraining, final_loss: float | None, resumed_from: int, loop_seconds: float, seconds: float
) -> dict:
    return {
        "steps": len(run.schedule),
        "examples": sum(run.sources.values()),
        "texts": len(run.table.ids),
        "batch_size": run.params.batch_size,
        "processes": run.accelerator.num_processes,
        "final_loss": round(final_loss, 5) if final_loss is not None else None,
        "in_loss": run.data.kinds_trained(run.schedule),
        "seconds": round(seconds, 1),
        "samples_per_second": round(sum(map(len, run.schedule[resumed_from:])) / loop_seconds, 2),
        "device": str(run.accelerator.device),
        "resumed_from_step": resumed_from,
    }


def save_model(run: PreparedTraining, output: Path, dataset: str | None) -> None:
    model = run.accelerator.unwrap_model(run.model)
    params = run.params
    merge_lora(model)
    set_prompts(model, params.query_prefix, params.passage_prefix)
    settings = computed_settings(params)
    defaults = {name: field.default for name, field in FitParams.model_fields.items()}
    describe_training(model, settings, resolve(params.base_model), dict(run.sources), dataset, defaults)
    model.save(str(output))
