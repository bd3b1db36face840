"""The completion cache as a portable file in the repository: `synthir cache export` writes every cached
completion as sorted JSON lines, `synthir cache import` (run by scripts/setup.sh) loads them into the local cache.
A fresh clone on another machine then reruns generation and judging without an LLM call and gets the committed
data back exactly, instead of what its own CPU's arithmetic would sample."""

from __future__ import annotations

from pathlib import Path

from .errors import DataError
from .fileio import json_lines, write_jsonl
from .llm.cache import CompletionCache, Entry

DEFAULT_FILE = Path("llm-cache/completions.jsonl")


def export_cache(cache: CompletionCache, path: str | Path = DEFAULT_FILE) -> int:
    """Write every entry of `cache` to `path` (sorted by key, so a re-export diffs cleanly); returns how many."""
    return write_jsonl(
        path,
        (
            {"key": key, "model": model, "text": e.text, "tokens_in": e.tokens_in, "tokens_out": e.tokens_out}
            | ({"logprobs": e.logprobs} if e.logprobs else {})
            for key, model, e in cache.items()
        ),
    )


def _entry(record: dict, path: Path, lineno: int) -> tuple[str, str, Entry]:
    try:
        key, model, text = record["key"], record["model"], record["text"]
        tokens_in, tokens_out = record["tokens_in"], record["tokens_out"]
        logprobs = record.get("logprobs")
    except KeyError as missing:
        raise DataError(f"{path}:{lineno}: missing {missing}") from None
    valid = (
        all(isinstance(v, str) for v in (key, model, text))
        and len(key) == 64
        and all(isinstance(v, int) and not isinstance(v, bool) for v in (tokens_in, tokens_out))
        and (logprobs is None or isinstance(logprobs, dict))
    )
    if not valid:
        raise DataError(f"{path}:{lineno}: not a completion exported by `synthir cache export`")
    return key, model, Entry(text, tokens_in, tokens_out, logprobs)


def import_cache(cache: CompletionCache, path: str | Path = DEFAULT_FILE) -> int:
    """Add the entries of `path` that `cache` lacks (a key already cached keeps its value); returns how many new.
    The whole file is checked before anything is stored."""
    path = Path(path)
    entries = [_entry(record, path, lineno) for lineno, record in json_lines(path)]
    before = len(cache)
    for model in sorted({m for _, m, _ in entries}):
        cache.put_many(model, [(key, entry) for key, m, entry in entries if m == model])
    return len(cache) - before
