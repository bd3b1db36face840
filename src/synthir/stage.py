"""What the stage scripts share: each reads exactly the params its dvc.yaml entry declares, and training stages
start themselves under `accelerate launch` without a shell.

Training on several machines (`train.num_machines` > 1) takes each machine's part from its environment, never
from params.yaml (which all machines share): SYNTHIR_MACHINE_RANK (0 on the main machine, then 1, 2, ...),
SYNTHIR_MAIN_ADDRESS (the main machine's host name or IPv4 address, as the others reach it) and SYNTHIR_MAIN_PORT
(a port free on the main machine, the same everywhere; default 29500). On one machine SYNTHIR_MAIN_PORT, or
`--main_process_port` in train.launch, fixes the port; without either a free port is picked, so that two runs on
one machine do not collide.

A stage that reads a param it does not declare would go stale silently when that param changes; `stage_params`
makes such a read fail loudly instead (a ConfigError naming the stage and the key). A stage that loads a model
passes `check_model` (`synthir.models.check_reference`), which checks the model references it declares before
anything runs; the others never import the model code, so a change to it reruns only the stages that load a model.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from .config import ModelCheck, Params, check_model_references, load_params, model_references
from .errors import ConfigError, excerpt
from .launch import launch_arguments, option_value, tcp_port
from .yamlfile import read_yaml

ALL = None
"""Marks a declared path whose whole subtree may be read."""


def declared_params(stage: str, dvc_file: str | Path = "dvc.yaml") -> list[str]:
    """The dotted params.yaml keys that dvc.yaml declares for `stage`."""
    dvc_file = Path(dvc_file)
    if not dvc_file.exists():
        raise ConfigError(f"{dvc_file}: not found (stage scripts run from the project root, e.g. by `dvc repro`)")
    pipeline = read_yaml(dvc_file)
    stages = pipeline.get("stages") if isinstance(pipeline, dict) else None
    if not isinstance(stages, dict):
        raise ConfigError(f"{dvc_file}: not a DVC pipeline file with a `stages` mapping")
    if stage not in stages:
        raise ConfigError(f"{dvc_file}: no stage '{stage}'")
    keys: list[str] = []
    for entry in stages[stage].get("params") or []:
        if isinstance(entry, str):
            keys.append(entry)
        elif isinstance(entry, dict):  # {params.yaml: [keys]}; other files are not ours to read
            keys += entry.get("params.yaml") or []
    return keys


def _tree(keys: list[str]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for key in keys:
        node = tree
        *parents, last = key.split(".")
        for part in parents:
            child = node.setdefault(part, {})
            if child is ALL:
                break
            node = child
        else:
            node[last] = ALL
    return tree


class ScopedParams:
    """A read-only view of a params block that only lets a stage read what it declared."""

    def __init__(self, block: BaseModel, declared: dict[str, Any], stage: str, prefix: str = "") -> None:
        self._block, self._declared, self._stage, self._prefix = block, declared, stage, prefix

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_") or name not in type(self._block).model_fields:
            raise AttributeError(name)
        key = self._prefix + name
        if name not in self._declared:
            raise ConfigError(
                f"stage '{self._stage}' reads '{key}', which its params in dvc.yaml do not declare "
                f"(a change to it would not rerun the stage): add '{key}' there"
            )
        value = getattr(self._block, name)
        subtree = self._declared[name]
        if subtree is ALL or not isinstance(value, BaseModel):
            return value
        return ScopedParams(value, subtree, self._stage, key + ".")

    def __repr__(self) -> str:
        return f"ScopedParams({self._stage!r}, {self._prefix or 'params'})"


def _covers(declared: dict[str, Any], key: str) -> bool:
    """Whether the declared tree holds dotted `key` (itself or a block above it)."""
    node: dict[str, Any] | None = declared
    for part in key.split("."):
        if node is ALL:
            return True
        if part not in node:
            return False
        node = node[part]
    return node is ALL


def declared_model_references(params: Params, keys: list[str]) -> list[tuple[str, str]]:
    """(dotted key, reference) of each model reference in `params` that the declared `keys` cover."""
    declared = _tree(keys)
    return [(key, reference) for key, reference in model_references(params) if _covers(declared, key)]


def stage_params(
    stage: str,
    params_file: str | Path = "params.yaml",
    dvc_file: str | Path = "dvc.yaml",
    check_model: ModelCheck | None = None,
) -> Any:
    """params.yaml, validated, seen through what dvc.yaml declares for `stage`; with `check_model`, the model
    references it declares are checked too, errors naming their keys."""
    params: Params = load_params(params_file)
    keys = declared_params(stage, dvc_file)
    if check_model is not None:
        check_model_references(declared_model_references(params, keys), check_model, str(Path(params_file)))
    return ScopedParams(params, _tree(keys), stage)


def launched_by_accelerate() -> bool:
    """True inside a process that `accelerate launch` started (every launcher sets this variable)."""
    return "ACCELERATE_MIXED_PRECISION" in os.environ


MACHINE_RANK, MAIN_ADDRESS, MAIN_PORT = "SYNTHIR_MACHINE_RANK", "SYNTHIR_MAIN_ADDRESS", "SYNTHIR_MAIN_PORT"
MACHINE_VARIABLES = (MACHINE_RANK, MAIN_ADDRESS, MAIN_PORT)
DEFAULT_MAIN_PORT = 29500
"""The port of a run over several machines when SYNTHIR_MAIN_PORT is unset (accelerate's and torchrun's)."""
_HOST = re.compile(r"(?=.{1,253}\Z)[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?")


def accelerate_arguments(train, environ: Mapping[str, str] | None = None) -> list[str]:
    """`accelerate launch` options from the train params: `num_processes` processes over `num_machines` machines
    (several: a torchrun launch, one process per GPU, or on the CPU processes that join over gloo), this
    machine's rank, the main machine's address and the port (`machine_arguments`), the precision, then
    `train.launch`. `environ` (os.environ by default) holds the machine variables."""
    environ = os.environ if environ is None else environ
    arguments = ["--num_processes", str(train.num_processes), "--num_machines", str(train.num_machines)]
    arguments += ["--dynamo_backend", "no", *machine_arguments(train, environ)]
    arguments += ["--mixed_precision", train.mixed_precision if train.device == "cuda" else "no"]
    if train.num_processes > 1 or train.num_machines > 1:
        arguments.insert(0, "--multi_gpu")
    elif train.device == "cpu":
        arguments.insert(0, "--cpu")
    return arguments + launch_arguments(train.launch)


def machine_arguments(train, environ: Mapping[str, str]) -> list[str]:
    """--machine_rank and --main_process_ip (several machines) and --main_process_port (several processes),
    from the machine variables (each checked when set); nothing for one process on one machine."""
    given = {name: environ[name] for name in MACHINE_VARIABLES if environ.get(name, "") != ""}
    rank = _machine_rank(given.get(MACHINE_RANK, "0"), train.num_machines)
    address = _address(given[MAIN_ADDRESS]) if MAIN_ADDRESS in given else None
    port = tcp_port(given[MAIN_PORT], MAIN_PORT) if MAIN_PORT in given else None
    launch_port = option_value(launch_arguments(train.launch), "--main_process_port")  # checked with the params
    if launch_port is not None and port is not None:
        raise ConfigError(f"{MAIN_PORT} and train.launch's --main_process_port both set the port: keep one")
    arguments = []
    if train.num_machines > 1:
        if MACHINE_RANK not in given or address is None:
            missing = MACHINE_RANK if MACHINE_RANK not in given else MAIN_ADDRESS
            raise ConfigError(
                f"{missing}: not set; train.num_machines {train.num_machines} needs on every machine {MACHINE_RANK} "
                f"(0 on the main one) and {MAIN_ADDRESS} (the main machine's address)"
            )
        arguments += ["--machine_rank", str(rank), "--main_process_ip", address]
    if launch_port is None and (train.num_processes > 1 or train.num_machines > 1):
        port = port or (DEFAULT_MAIN_PORT if train.num_machines > 1 else free_port())
        arguments += ["--main_process_port", str(port)]
    return arguments


def free_port() -> int:
    """A TCP port free on this machine now (the system's choice): the rendezvous port of a one-machine run."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("", 0))
        return probe.getsockname()[1]


def _machine_rank(value: str, machines: int) -> int:
    if not (value.isascii() and value.isdigit() and len(value) <= 5 and int(value) < machines):
        raise ConfigError(
            f"{MACHINE_RANK}: {excerpt(value)} is not a machine rank of train.num_machines {machines} "
            f"(0 to {machines - 1})"
        )
    return int(value)


def _address(value: str) -> str:
    if not _HOST.fullmatch(value):  # fullmatch: `$` would let a final newline through
        raise ConfigError(
            f"{MAIN_ADDRESS}: {excerpt(value)} is not a host name or IPv4 address (letters, digits, '.' and '-')"
        )
    return value


def check_gpu_count(train, gpus: int) -> None:
    """Refuse more processes on this machine than the GPUs torch sees (one process per GPU) on `cuda`."""
    if train.device != "cuda":
        return
    if gpus == 0:
        raise ConfigError("train.device is cuda, but torch sees no GPU here (train.device: cpu trains on the CPU)")
    here = train.num_processes // train.num_machines
    if here > gpus:
        machines = train.num_machines
        spread = f" ({train.num_processes} over train.num_machines {machines})" if machines > 1 else ""
        raise ConfigError(
            f"train.num_processes: {here} processes{spread} on this machine, one per GPU, but torch sees {gpus} "
            "GPU(s) here (CUDA_VISIBLE_DEVICES may hide some)"
        )


def relaunch_under_accelerate(train, script: str | Path, argv: list[str]) -> int:
    """Run `script argv` under `accelerate launch` with the options of the train params: an argument list, never
    a shell, so nothing in params.yaml can run anything but accelerate. Returns the launcher's exit status."""
    import torch

    check_gpu_count(train, torch.cuda.device_count() if train.device == "cuda" else 0)
    command = [sys.executable, "-m", "accelerate.commands.launch", *accelerate_arguments(train), str(script), *argv]
    return subprocess.call(command)
