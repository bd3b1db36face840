"""The completion cache as a portable file: `synthir cache export FILE` writes cached completions as JSON lines
(gzip-compressed for a `.gz` name), `synthir cache import FILE` loads them into the local cache (scripts/setup.sh
imports every file in llm-cache/). A fresh clone on another machine then reruns generation and judging without an
LLM call and gets the committed data back exactly, instead of what its own CPU's arithmetic would sample.

A file is a header line (format, synthir version, export time, the models and the number of completions), then one
line per completion, sorted by key, so a re-export diffs cleanly: the cache key, the model that wrote it, when it
was written (provenance), the text and its token counts. Importing adds only keys the cache lacks: a key already
cached with a different completion keeps the local one, and the conflict is counted, never overwritten.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from . import __version__
from .errors import DataError
from .fileio import json_lines, write_jsonl
from .llm.cache import CompletionCache, Entry

DEFAULT_FILE = Path("llm-cache/completions.jsonl")
FORMAT = "synthir-completions/1"


@dataclass(frozen=True)
class Imported:
    """What an import did: completions added, already present (same text) and conflicting (kept local)."""

    added: int
    present: int
    conflicts: int


def export_cache(
    cache: CompletionCache, path: str | Path = DEFAULT_FILE, models: list[str] | None = None, since: float = 0.0
) -> int:
    """Write the entries of `cache` (of `models` only, written at or after `since`, when given) to `path`;
    returns how many."""
    rows = [
        (key, model, e)
        for key, model, e in cache.items()
        if (not models or model in models) and (e.created or 0.0) >= since
    ]
    header = {
        "format": FORMAT,
        "synthir": __version__,
        "exported": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "completions": len(rows),
        "models": dict(sorted(Counter(model for _, model, _ in rows).items())),
    }
    write_jsonl(path, [header, *(_record(key, model, e) for key, model, e in rows)])
    return len(rows)


def _record(key: str, model: str, entry: Entry) -> dict:
    record = {"key": key, "model": model, "text": entry.text, "tokens_in": entry.tokens_in}
    record |= {"tokens_out": entry.tokens_out}
    if entry.created is not None:
        record["created"] = round(entry.created, 3)
    return record | ({"logprobs": entry.logprobs} if entry.logprobs else {})


def _entries(path: Path) -> Iterator[tuple[str, str, Entry]]:
    for lineno, record in json_lines(path):
        if "format" in record:  # the header (files exported before it existed have none)
            if record["format"] != FORMAT:
                raise DataError(f"{path}:{lineno}: format {record['format']!r}; this synthir reads {FORMAT!r}")
            continue
        yield _entry(record, path, lineno)


def _entry(record: dict, path: Path, lineno: int) -> tuple[str, str, Entry]:
    try:
        key, model, text = record["key"], record["model"], record["text"]
        tokens_in, tokens_out = record["tokens_in"], record["tokens_out"]
    except KeyError as missing:
        raise DataError(f"{path}:{lineno}: missing {missing}") from None
    logprobs, created = record.get("logprobs"), record.get("created")
    valid = (
        all(isinstance(v, str) for v in (key, model, text))
        and len(key) == 64
        and all(isinstance(v, int) and not isinstance(v, bool) for v in (tokens_in, tokens_out))
        and (logprobs is None or isinstance(logprobs, dict))
        and (created is None or (isinstance(created, int | float) and not isinstance(created, bool)))
    )
    if not valid:
        raise DataError(f"{path}:{lineno}: not a completion exported by `synthir cache export`")
    return key, model, Entry(text, tokens_in, tokens_out, logprobs, created)


def import_cache(cache: CompletionCache, path: str | Path = DEFAULT_FILE) -> Imported:
    """Add the entries of `path` that `cache` lacks. A key already cached keeps its value: counted as present
    when the text is the same, as a conflict when it differs. The whole file is checked before anything is
    stored."""
    path = Path(path)
    entries = list(_entries(path))
    local = cache.get_many([key for key, _, _ in entries])
    fresh = [(key, model, e) for key, model, e in entries if key not in local]
    conflicts = sum(key in local and local[key].text != e.text for key, _, e in entries)
    for model in sorted({m for _, m, _ in fresh}):
        cache.put_many(model, [(key, entry) for key, m, entry in fresh if m == model])
    return Imported(added=len(fresh), present=len(entries) - len(fresh) - conflicts, conflicts=conflicts)
