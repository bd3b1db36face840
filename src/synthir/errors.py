"""Errors a user can act on: each names the file (and line) or the setting at fault."""

from __future__ import annotations


class SynthirError(Exception):
    """Base class: the CLI and stage scripts print these as one line, without a traceback."""


class ConfigError(SynthirError):
    """A params.yaml value is missing, unknown or out of range."""


class DataError(SynthirError):
    """A data file is malformed; the message names the file and line."""


class ChecksumError(DataError):
    """A downloaded or mirrored file does not match its published checksum."""


class UnsafeArchiveError(DataError):
    """An archive member would escape the target folder or is a link."""


class ModelRefError(SynthirError):
    """A model reference cannot be resolved."""


def at(path: object, line: int | None = None) -> str:
    """`path:line` prefix for messages."""
    return f"{path}:{line}" if line is not None else str(path)
