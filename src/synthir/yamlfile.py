"""YAML files read as DVC reads them (params.yaml, presets, dvc.yaml), bounded so that no file can exhaust memory."""

from __future__ import annotations

import re
from pathlib import Path

from .errors import ConfigError, excerpt

MAX_YAML_BYTES = 1 << 20
"""params.yaml, a preset and dvc.yaml are a few KB; a larger file is refused before it is parsed."""
MAX_YAML_VALUES = 100_000
"""Values (mappings, lists, scalars) a YAML file may hold once its aliases are expanded: params need a few
hundred, and a few lines of nested aliases (a "billion laughs" file) would otherwise expand past any memory."""
MAX_YAML_DEPTH = 100
MAX_NUMBER_CHARS = 100
_NUMBER_TAGS = ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float")


def read_yaml(path: Path) -> object:
    """YAML 1.2 as DVC reads it (ruamel.yaml): `2e-5` is a number, `yes` a string, a repeated key an error. Size,
    nesting and alias expansion are bounded (`MAX_YAML_*`)."""
    from ruamel.yaml import YAML
    from ruamel.yaml.constructor import DuplicateKeyError
    from ruamel.yaml.error import MarkedYAMLError

    text = _yaml_text(path)
    loader = YAML(typ="safe", pure=True)
    try:
        _check_expansion(loader.compose(text), path)
        return loader.load(text)
    except RecursionError:
        raise ConfigError(f"{path}: nested too deeply (at most {MAX_YAML_DEPTH} levels)") from None
    except (ValueError, TypeError) as error:  # a value its tag cannot build: `2001-13-45`, `!!float "abc"`
        raise ConfigError(f"{path}: invalid value: {excerpt(str(error), 100)}") from None
    except DuplicateKeyError as error:
        key = re.search(r'duplicate key "([^"]*)"', str(error.problem))
        name = f"{excerpt(key.group(1))} " if key else ""
        raise ConfigError(
            f"{path}:{error.problem_mark.line + 1}: duplicate key {name}(DVC rejects the file too)"
        ) from None
    except MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConfigError(f"{where}: invalid YAML: {error.problem or error.context}") from None


def _yaml_text(path: Path) -> str:
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_YAML_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(f"{path}: not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a folder, expected a YAML file") from None
    if len(data) > MAX_YAML_BYTES:
        raise ConfigError(f"{path}: larger than {MAX_YAML_BYTES // 1024} KiB; a params or pipeline file is a few KB")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})") from None


def _check_expansion(root, path: Path) -> None:
    """Refuse a composed YAML document that would hold more than MAX_YAML_VALUES values once its aliases are
    expanded, or nest deeper than MAX_YAML_DEPTH, or hold an alias to a value that contains it. Each node is
    counted once (a shared node's count is remembered), so the check costs the size of the file, not of its
    expansion."""
    from ruamel.yaml.nodes import MappingNode, SequenceNode

    counted: dict[int, int] = {}
    open_nodes: set[int] = set()

    def count(node, depth: int) -> int:
        where = f"{path}:{node.start_mark.line + 1}"
        if id(node) in counted:
            return counted[id(node)]
        if id(node) in open_nodes:
            raise ConfigError(f"{where}: an alias refers to a value that contains it (a recursive structure)")
        if depth > MAX_YAML_DEPTH:
            raise ConfigError(f"{where}: nested too deeply (at most {MAX_YAML_DEPTH} levels)")
        if node.tag in _NUMBER_TAGS and len(node.value) > MAX_NUMBER_CHARS:
            raise ConfigError(f"{where}: a number of {len(node.value):,} characters (at most {MAX_NUMBER_CHARS})")
        children = []
        if isinstance(node, SequenceNode):
            children = node.value
        elif isinstance(node, MappingNode):
            children = [child for pair in node.value for child in pair]
        open_nodes.add(id(node))
        total = 1 + sum(count(child, depth + 1) for child in children)
        open_nodes.discard(id(node))
        if total > MAX_YAML_VALUES:
            raise ConfigError(
                f"{where}: this value holds more than {MAX_YAML_VALUES:,} values once its YAML aliases (*name) "
                f"are expanded; params need a few hundred (write them out, or use fewer aliases)"
            )
        counted[id(node)] = total
        return total

    if root is not None:
        count(root, 0)
