"""Presets: partial params files merged into params.yaml (e.g. presets/gpu.yaml for the papers' settings)."""

from __future__ import annotations

from pathlib import Path

import yaml

from .config import parse_params
from .errors import ConfigError
from .fileio import atomic_file


def merge(base: dict, overlay: dict) -> dict:
    """Overlay mappings key by key; anything else in the overlay replaces the base value. A block naming a
    `backend` replaces its base block whole, so one backend's options never leak into another's."""
    merged = dict(base)
    for key, value in overlay.items():
        nested = isinstance(value, dict) and isinstance(base.get(key), dict) and "backend" not in value
        merged[key] = merge(base[key], value) if nested else value
    return merged


def apply_preset(preset: str | Path, params: str | Path = "params.yaml") -> dict:
    """Merge `preset` into `params` in place; the result is validated before anything is written."""
    preset, params = Path(preset), Path(params)
    if not preset.is_file():
        raise ConfigError(f"{preset}: not found")
    overlay = yaml.safe_load(preset.read_text(encoding="utf-8")) or {}
    merged = merge(yaml.safe_load(params.read_text(encoding="utf-8")) or {}, overlay)
    parse_params(merged, f"{params} + {preset}")
    with atomic_file(params) as handle:
        yaml.safe_dump(merged, handle, sort_keys=False, allow_unicode=True)
    return merged
