"""What the stage scripts share: each reads exactly the params its dvc.yaml entry declares, and training stages
start themselves under `accelerate launch` without a shell.

A stage that reads a param it does not declare would go stale silently when that param changes; `stage_params`
makes such a read fail loudly instead (a ConfigError naming the stage and the key).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from .config import Params, launch_arguments, load_params, read_yaml
from .errors import ConfigError

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


def stage_params(stage: str, params_file: str | Path = "params.yaml", dvc_file: str | Path = "dvc.yaml") -> Any:
    """params.yaml, validated, seen through what dvc.yaml declares for `stage`."""
    params: Params = load_params(params_file)
    return ScopedParams(params, _tree(declared_params(stage, dvc_file)), stage)


def launched_by_accelerate() -> bool:
    """True inside a process that `accelerate launch` started (every launcher sets this variable)."""
    return "ACCELERATE_MIXED_PRECISION" in os.environ


def accelerate_arguments(train) -> list[str]:
    """`accelerate launch` options from the train params: `num_processes` processes (several: a torchrun launch,
    one process per GPU, or on the CPU processes that join over gloo), the precision, then `train.launch`."""
    arguments = ["--num_processes", str(train.num_processes), "--num_machines", "1", "--dynamo_backend", "no"]
    arguments += ["--mixed_precision", train.mixed_precision if train.device == "cuda" else "no"]
    if train.num_processes > 1:
        arguments.insert(0, "--multi_gpu")
    elif train.device == "cpu":
        arguments.insert(0, "--cpu")
    return arguments + launch_arguments(train.launch)


def relaunch_under_accelerate(train, script: str | Path, argv: list[str]) -> int:
    """Run `script argv` under `accelerate launch` with the options of the train params: an argument list, never
    a shell, so nothing in params.yaml can run anything but accelerate. Returns the launcher's exit status."""
    command = [sys.executable, "-m", "accelerate.commands.launch", *accelerate_arguments(train), str(script), *argv]
    return subprocess.call(command)
