"""Errors a user can act on: each names the file (and line) or the setting at fault, and how they end a command."""

from __future__ import annotations

import functools
import logging
import os
import sys
from collections.abc import Callable


class SynthirError(Exception):
    """Base class: the CLI and stage scripts print these as one line, without a traceback."""


class ConfigError(SynthirError):
    """A params.yaml value, a command-line flag or a prompt file is missing, unknown or out of range."""


class DataError(SynthirError):
    """A data file is malformed; the message names the file and line."""


class ChecksumError(DataError):
    """A downloaded or mirrored file does not match its published checksum."""


class UnsafeArchiveError(DataError):
    """An archive member would escape the target folder, is a link, or inflates past a bound."""


class ModelRefError(SynthirError):
    """A model reference cannot be resolved."""


def at(path: object, line: int | None = None) -> str:
    """`path:line` prefix for messages."""
    return f"{path}:{line}" if line is not None else str(path)


def describe_os_error(error: OSError) -> str:
    """`file: reason` for an operating-system error (disk full, permission denied, a folder where a file
    should be)."""
    reason = (error.strerror or os.strerror(error.errno)) if error.errno else str(error)
    names = [name for name in (error.filename, error.filename2) if name]
    return f"{' -> '.join(map(str, names))}: {reason}" if names else reason


def friendly_errors(main: Callable[..., int | None]) -> Callable[..., int]:
    """Run a command: a SynthirError or an operating-system error (disk full, permissions) is printed as one
    line and the command returns 1, instead of a traceback."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs) -> int:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        try:
            return main(*args, **kwargs) or 0
        except SynthirError as error:  # several problems: one line each
            print("\n".join(f"error: {line}" for line in str(error).splitlines()), file=sys.stderr)
        except OSError as error:
            print(f"error: {describe_os_error(error)}", file=sys.stderr)
        return 1

    return wrapper


def excerpt(value: object, width: int = 60) -> str:
    """`value` as a message echoes a user's input: its repr cut to `width` characters (a container: its size)."""
    if isinstance(value, list | tuple | dict | set):
        return f"{type(value).__name__} of {len(value)}"
    return shorten(repr(value[: width + 1] if isinstance(value, str) else value), width)


def shorten(text: str, width: int = 60) -> str:
    """`text` cut to `width` characters, the last an ellipsis when it was cut."""
    return text if len(text) <= width else text[: width - 1] + "…"
