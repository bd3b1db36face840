"""Presets: partial params files merged into params.yaml (e.g. presets/gpu.yaml, the pipeline at GPU scale).

params.yaml is edited as a round trip (ruamel.yaml): its comments, key order and layout survive the merge.
"""

from __future__ import annotations

import io
from collections.abc import MutableMapping
from pathlib import Path

from .config import parse_params
from .errors import ConfigError
from .fileio import atomic_file
from .models import check_reference
from .yamlfile import read_yaml


def merge(base: MutableMapping, overlay: dict) -> MutableMapping:
    """Overlay mappings key by key, in place; anything else in the overlay replaces the base value. A block naming
    a `backend` replaces its base block whole, so one backend's options never leak into another's."""
    for key, value in overlay.items():
        nested = isinstance(value, dict) and isinstance(base.get(key), MutableMapping) and "backend" not in value
        if nested:
            merge(base[key], value)
        else:
            base[key] = _styled_like(base.get(key), value)
    return base


def _styled_like(old: object, new: object) -> object:
    """A list replacing a `[a, b]` list is written `[a, b]` too."""
    from ruamel.yaml.comments import CommentedSeq

    if isinstance(new, list) and isinstance(old, CommentedSeq) and old.fa.flow_style():
        styled = CommentedSeq(new)
        styled.fa.set_flow_style()
        return styled
    return new


def apply_preset(preset: str | Path, params: str | Path = "params.yaml") -> dict:
    """Merge `preset` into `params` in place; the result is validated before anything is written."""
    from ruamel.yaml import YAML

    preset, params = Path(preset), Path(params)
    overlay = read_yaml(preset)
    if overlay is None or overlay == {}:
        raise ConfigError(f"{preset}: empty, nothing to merge (a preset holds params blocks: `train: {{epochs: 2}}`)")
    if not isinstance(overlay, dict):
        raise ConfigError(f"{preset}: expected a mapping of params blocks, got a {type(overlay).__name__}")
    read_yaml(params)  # the same checks as every stage: duplicates, syntax, encoding
    editor = YAML()  # round trip
    editor.preserve_quotes = True
    editor.width = 4096  # never re-wrap a line
    editor.representer.add_representer(type(None), _null)
    document = editor.load(params.read_text(encoding="utf-8"))
    merged = merge(document, overlay)
    text = _dump(editor, merged)
    values = YAML(typ="safe", pure=True).load(text)
    parse_params(values, f"{params} + {preset}", check_model=check_reference)  # validated before it is written
    with atomic_file(params) as handle:
        handle.write(text)
    return merged


def _null(representer, _):
    return representer.represent_scalar("tag:yaml.org,2002:null", "null")  # `key: null`, not `key:`


def _dump(editor, document) -> str:
    buffer = io.StringIO()
    editor.dump(document, buffer)
    return buffer.getvalue()
