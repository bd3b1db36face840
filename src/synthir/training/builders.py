"""What a training run is built from, before its first step: the accelerator, the model, the tokenized examples
and their whole step schedule, the optimizer and its schedule, and the run's identity (which checkpoints it may
resume). `setup` runs the builders in a fixed order: the random numbers each draws stay the same."""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..backbones import add_lora, set_attention_dropout
from ..config import DISTILLED, FitParams
from ..errors import ConfigError, DataError
from .distributed import agreed, builders_first
from .losses import BatchLoss, batch_loss
from .schedule import batch_schedule
from .tokenized import Encoded, TokenTable, encode_examples

NOT_COMPUTED = frozenset({"log_every"})
"""FitParams fields that change what is reported, not the weights: left out of the run hash and the model card."""
_MORE_EXAMPLES = "make more: raise sample.fraction, loosen the verify filters or add triples.sources"


@dataclass
class PreparedTraining:
    """What a training run holds from setup to summary: the prepared model, optimizer and schedule, the tokenized
    examples and every step's batch."""

    params: FitParams
    accelerator: Any
    model: Any
    optimizer: torch.optim.Optimizer
    scheduler: Any
    table: TokenTable
    data: Encoded
    schedule: list[list[int]]
    sources: Counter
    """Training examples per source (train, doc2query, syntriever, ...)."""
    state_dir: Path
    loss_fn: BatchLoss


def setup(params: FitParams, triples: Path, checkpoints: Path) -> PreparedTraining:
    """Model, tokenized examples, the whole step schedule, optimizer and scheduler, prepared by accelerate."""
    check_device(params)
    examples = read_examples(triples)
    accelerator = start_accelerator(params)
    model, start = build_model(params, accelerator)
    table, data, schedule = build_data(params, model, examples, triples)
    optimizer, scheduler = build_optimizer(params, model, table, len(schedule))
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    run_id = agreed_run_id(params, accelerator, triples, start)
    sources = Counter(example.get("source", "unknown") for example in examples)
    loss_fn = batch_loss(params.loss, params.tau, params.teacher_temperature, params.contrastive_weight)
    return PreparedTraining(
        params, accelerator, model, optimizer, scheduler, table, data, schedule, sources, checkpoints / run_id, loss_fn
    )


def check_device(params: FitParams) -> None:
    if params.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device is cuda, but torch sees no GPU here (train.device: cpu trains on the CPU)")


def read_examples(triples: Path) -> list[dict]:
    """The training examples; none is a DataError naming the file, before any model loads."""
    from ..fileio import read_jsonl

    examples = list(read_jsonl(triples))
    if not examples:
        raise DataError(f"{triples}: no training examples; {_MORE_EXAMPLES}")
    return examples


def start_accelerator(params: FitParams):
    """The run's accelerator (on the CPU or the GPU, in the run's precision) with every random state seeded."""
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration, set_seed

    on_gpu = params.device == "cuda"
    accelerator = Accelerator(  # split_batches: a step is one global batch, so the LR schedule steps once
        cpu=not on_gpu,
        mixed_precision=params.mixed_precision if on_gpu else "no",
        dataloader_config=DataLoaderConfiguration(split_batches=True),
    )
    set_seed(params.seed)
    return accelerator


def build_model(params: FitParams, accelerator) -> tuple[Any, str]:
    """The encoder to train (attention dropout set, LoRA added, gradient checkpointing on, as the params ask),
    and the fingerprint of its starting weights."""
    from ..retrieval import load_encoder, model_fingerprint

    with builders_first(accelerator):
        model = load_encoder(
            params.base_model,
            params.max_seq_length,
            device=str(accelerator.device),
            dtype="at_least_float32",
            pooling=params.pooling,
            keep_layers=params.keep_layers,
            length_key="train.max_seq_length",
        )
    if params.attention_dropout is not None and not set_attention_dropout(model, params.attention_dropout):
        raise ConfigError(f"train.attention_dropout: {params.base_model} has no attention dropout synthir can set")
    # a checkpoint resumes only a run from the same starting weights, whatever base_model names (models/adapted
    # holds different weights from run to run)
    start = model_fingerprint(model)
    if params.lora_rank:
        add_lora(model, params.lora_rank)
    if params.gradient_checkpointing:  # reentrant checkpointing (transformers 4's default) fails under DDP
        model[0].auto_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model, start


def build_data(
    params: FitParams, model, examples: list[dict], triples: Path
) -> tuple[TokenTable, Encoded, list[list[int]]]:
    """The examples tokenized by the model's tokenizer, and every step's batch."""
    table, data = encode_examples(
        examples,
        model.tokenizer,
        model.max_seq_length,
        params.query_prefix,
        params.passage_prefix,
        params.loss == "snn",
        params.num_negatives,
        distillation=params.loss if params.loss in DISTILLED else None,
    )
    if data.margins is not None and not any(data.margins):
        raise ConfigError(
            f"{triples}: no example has a negative, and train.loss {params.loss} learns from the teacher's scores "
            "of negatives"
        )
    schedule = batch_schedule(data, table, params.batch_size, params.seed, params.epochs, params.max_steps)
    if not schedule:
        raise DataError(f"{triples}: {len(examples)} examples make no training step; {_MORE_EXAMPLES}")
    return table, data, schedule


def build_optimizer(params: FitParams, model, table: TokenTable, steps: int) -> tuple[torch.optim.Optimizer, Any]:
    """AdamW over the parameters an embedding depends on (the others frozen), and its warmup-then-cosine
    learning rate over the run's `steps`."""
    from transformers import get_cosine_schedule_with_warmup

    freeze_unreachable(model, table)
    optimizer = torch.optim.AdamW(_param_groups(model, params.weight_decay), lr=params.lr)
    warmup = params.warmup_steps or math.ceil(params.warmup_ratio * steps)
    return optimizer, get_cosine_schedule_with_warmup(optimizer, warmup, steps)


def freeze_unreachable(model, table: TokenTable) -> list[str]:
    """Freeze the parameters an embedding does not depend on (BERT's pooler, a decoder's LM head), found by one
    backward pass in eval mode (no dropout, no random numbers drawn). They never receive a gradient, so freezing
    them changes no step, and DDP then needs no per-step search for unused parameters."""
    device = next(model.parameters()).device
    model.eval()
    model(table.pad([0], device))["sentence_embedding"].sum().backward()
    frozen = [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None]
    for name, parameter in model.named_parameters():
        if name in frozen:
            parameter.requires_grad_(False)
    model.zero_grad(set_to_none=True)
    model.train()
    return frozen


def _param_groups(model, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        (no_decay if parameter.ndim < 2 or "LayerNorm" in name or "norm" in name.lower() else decay).append(parameter)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def computed_settings(params: FitParams) -> dict:
    """The settings that decide the weights: what was computed, not how it was launched or reported."""
    return params.model_dump(include=set(FitParams.model_fields) - NOT_COMPUTED)


def run_hash(settings: dict, triples: Path) -> str:
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    digest.update(triples.read_bytes())
    return digest.hexdigest()[:16]


def agreed_run_id(params: FitParams, accelerator, triples: Path, start: str) -> str:
    """The run's id, the same on every process: the hash of what it computes (not how it was launched,
    train.launch, but the number of processes: random states), its triples and its starting weights."""
    settings = {**computed_settings(params), "processes": accelerator.num_processes, "start": start}
    return agreed(  # processes on several machines must train the same batches from the same weights
        accelerator,
        run_hash(settings, triples),
        "trains another run than process 0 (its params, triples or base model differ; every machine needs the "
        "same params.yaml, code and data)",
    )
