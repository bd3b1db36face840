"""Which devices and precisions this machine runs: one check for every stage, the CLI and the hf backend."""

from __future__ import annotations

import torch

from .errors import ConfigError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
"""The precisions a stage may encode in (`config.DeviceParams.dtype`)."""


def check_device(device: str, dtype: str, device_key: str = "device", dtype_key: str = "dtype") -> None:
    """Refuse a device or precision this machine cannot run; the messages name the param (or flag) keys."""
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{device_key} is cuda, but torch sees no GPU here: set it to cpu")
    if device == "cuda" and dtype == "bfloat16" and not gpu_runs_bfloat16():
        raise ConfigError(f"{dtype_key} is bfloat16, but this GPU does not support it: set it to float16")


def gpu_runs_bfloat16() -> bool:
    """Whether the current GPU runs bfloat16 natively (emulated, as on pre-Ampere cards, it is slower than float16)."""
    return torch.cuda.is_bf16_supported(including_emulation=False)
