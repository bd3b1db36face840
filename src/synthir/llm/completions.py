"""The completion cache as a portable file: `synthir cache export FILE` writes cached completions as JSON lines
(gzip-compressed for a `.gz` name), `synthir cache import FILE` loads them into the local cache, and the stages
that call an LLM import the committed files of `llm-cache/` before they start. A fresh clone on another machine
then reruns generation and judging without an LLM call and gets the committed data back exactly.

A file is a header line (format, synthir version, export time, the number of completions per model), then one line
per completion, sorted by key, so a re-export diffs cleanly: the cache key, the model that wrote it, its kind (a
generated `text` or a yes/no `score`), the request the key is computed from (backend identity, prompt or messages,
sampling, sample index), the text, its token counts and when it was written.

Completions decide what the pipeline writes, so an import trusts nothing: each line's key is recomputed from its
request, and its model label and kind must agree with that request. A key that arrives with two texts (in one
file, across the files of one import, or against the local cache) is a conflict. One refused line or conflict
refuses the whole import: it is one transaction, and the error names every file and line at fault.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path
from typing import IO, Any

from .. import __version__
from ..errors import ConfigError, DataError, excerpt
from ..fileio import LineBounds, json_lines, require_file, write_jsonl
from .base import Sampling
from .store import SCORE_MARKER, CompletionCache, Entry, lookup, request_key, store

log = logging.getLogger(__name__)

DEFAULT_FOLDER = Path("llm-cache")
DEFAULT_FILE = DEFAULT_FOLDER / "completions.jsonl"
FORMAT = "synthir-completions/2"
BOUNDS = LineBounds(line_bytes=1 << 20, file_bytes=1 << 30)
"""A line holds one completion and its prompt (at most a few hundred KB); a file expands to at most 1 GiB."""
MAX_TOKENS = 10_000_000
MAX_LOGPROBS = 1_000
MAX_PROBLEMS_SHOWN = 10
_FIELDS = {"key", "model", "kind", "request", "text", "tokens_in", "tokens_out", "created", "logprobs"}
_HEADER = {"format", "synthir", "exported", "completions", "models"}
_REQUEST = {"identity", "input", "sampling", "sample"}
_IDENTITY = {"backend", "server", "model"}
_HEX = frozenset("0123456789abcdef")


class Refused(ValueError):
    """A line that is not a verifiable completion; the message says why."""


@dataclass
class FileReport:
    """What an import did with one file's lines: each counted once."""

    path: Path
    new: int = 0
    same: int = 0
    conflicts: int = 0
    refused: int = 0
    replaced: int = 0
    """Local completions the file's text replaced (`replace_local`)."""

    @property
    def lines(self) -> int:
        return self.new + self.same + self.conflicts + self.refused + self.replaced

    def __str__(self) -> str:
        fates = f"{self.new} new, {self.same} already cached"
        if self.replaced:
            fates += f", {self.replaced} replaced the local text"
        if self.conflicts or self.refused:
            fates += f", {self.conflicts} conflicting, {self.refused} refused"
        return f"{self.path}: {self.lines} completions: {fates}"


@dataclass
class _Import:
    """One import under way: per-file counts, the problems found, and where each key was first seen."""

    cache: CompletionCache
    replace_local: bool
    reports: list[FileReport] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    """The first MAX_PROBLEMS_SHOWN problems; `unshown` counts the rest."""
    unshown: int = 0
    seen: dict[str, str] = field(default_factory=dict)

    def problem(self, where: str, why: str) -> None:
        if len(self.problems) < MAX_PROBLEMS_SHOWN:
            self.problems.append(f"{where}: {why}")
        else:
            self.unshown += 1


def import_cache(cache: CompletionCache, paths: Path | str | Sequence[Path | str], replace_local: bool = False):
    """Import the completions of `paths` (one path or several) into `cache` as one transaction: everything or,
    when any line is refused or conflicts, nothing (a DataError names each file and line at fault). A key cached
    locally with another text is a conflict, unless `replace_local` lets the file's text replace it. Returns a
    `FileReport` per file (one for a single path)."""
    single = isinstance(paths, str | Path)
    files = [require_file(p) for p in ([paths] if single else paths)]
    if not files:
        raise ConfigError("no completion file to import")
    run = _Import(cache, replace_local)
    with cache.transaction() as db:
        for path in files:
            run.reports.append(_import_file(db, path, run))
        if run.problems:
            raise DataError(_refusal(run))  # rolls the transaction back
    return run.reports[0] if single else run.reports


def import_folder(
    cache: CompletionCache, folder: Path | str = DEFAULT_FOLDER, replace_local: bool = False
) -> list[FileReport]:
    """Import every `*.jsonl` and `*.jsonl.gz` of `folder` (the committed completions), as `import_cache` does."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: not a folder of completion files")
    files = sorted(p for p in folder.iterdir() if p.name.endswith((".jsonl", ".jsonl.gz")))
    return import_cache(cache, files, replace_local) if files else []


def _refusal(run: _Import) -> str:
    more = [f"... and {run.unshown} more"] if run.unshown else []
    return "\n".join([*run.problems, *more, *map(str, run.reports), "nothing was imported"])


def _import_file(db, path: Path, run: _Import) -> FileReport:
    report = FileReport(path)
    header: dict | None = None
    models: Counter[str] = Counter()
    for lineno, record in json_lines(path, BOUNDS):
        where = f"{path}:{lineno}"
        if header is None:
            header = _header(record, where)
            continue
        try:
            key, model, entry = completion(record)
        except Refused as why:
            report.refused += 1
            run.problem(where, str(why))
            continue
        models[model] += 1
        _add(db, run, report, where, model, key, entry)
    if header is None:
        raise DataError(f"{path}: empty; a completions file starts with its header line")
    if not report.lines:
        raise DataError(f"{path}: holds a header and no completion")
    _check_totals(header, models, report, run, path)
    return report


def _add(db, run: _Import, report: FileReport, where: str, model: str, key: str, entry: Entry) -> None:
    held = lookup(db, key)
    if held is None:
        store(db, model, key, entry)
        report.new += 1
    elif run.replace_local and key not in run.seen and held[1].text != entry.text:
        store(db, model, key, entry, replace=True)
        report.replaced += 1
    elif held[1].text == entry.text:
        if held[1].request is None:  # cached by an older synthir: the verified request goes with it now
            store(db, model, key, entry, replace=True)
        report.same += 1
    else:
        report.conflicts += 1
        other = run.seen.get(key) or f"{run.cache.path} (the local cache; --replace-local to take the file's)"
        run.problem(where, f"completion {key[:12]}… has another text in {other}")
    run.seen.setdefault(key, where)


def _header(record: dict, where: str) -> dict:
    if record.get("format") != FORMAT:
        found = record.get("format")
        hint = "a file without requests cannot be verified: export it again" if found else "no header line"
        raise DataError(f"{where}: format {excerpt(found)}; this synthir reads {FORMAT!r} ({hint})")
    unknown = set(record) - _HEADER
    counts = record.get("models")
    valid = (
        not unknown
        and _count(record.get("completions"))
        and isinstance(counts, dict)
        and all(isinstance(m, str) and _count(n) for m, n in counts.items())
    )
    if not valid:
        raise DataError(f"{where}: not a header written by `synthir cache export`")
    return record


def _check_totals(header: dict, models: Counter[str], report: FileReport, run: _Import, path: Path) -> None:
    """A header that lies about what its file holds refuses the file."""
    if header["completions"] != report.lines or (not report.refused and header["models"] != dict(models)):
        run.problem(
            f"{path}:1",
            f"the header promises {header['completions']} completions {_listed(header['models'])}, "
            f"the file holds {report.lines} {_listed(dict(models))}",
        )


def completion(record: dict) -> tuple[str, str, Entry]:
    """(key, model, entry) of one exported line, verified: its key is its request's, its model label is the
    request's model and its kind matches its sampling; a Refused error says what does not hold."""
    if "format" in record:
        raise Refused("a header where a completion belongs")
    if unknown := set(record) - _FIELDS:
        raise Refused(f"unknown field(s) {', '.join(excerpt(name) for name in sorted(unknown)[:5])}")
    if missing := {"key", "model", "kind", "request", "text", "tokens_in", "tokens_out"} - set(record):
        raise Refused(f"missing {', '.join(sorted(missing))}")
    key, model, kind, request, text = (record[k] for k in ("key", "model", "kind", "request", "text"))
    if not (isinstance(key, str) and len(key) == 64 and set(key) <= _HEX):
        raise Refused(f"key {excerpt(key)} is not 64 lower-case hex digits")
    _check_request(request)
    if request_key(request) != key:
        raise Refused(f"key {key[:12]}… is not the hash of its request")
    if model != request["identity"]["model"]:
        raise Refused(f"model label {excerpt(model)}, but the request is for {excerpt(request['identity']['model'])}")
    if not isinstance(text, str):
        raise Refused("text is not a string")
    _check_kind(kind, request, text)
    tokens_in, tokens_out = record["tokens_in"], record["tokens_out"]
    if not (_count(tokens_in, MAX_TOKENS) and _count(tokens_out, MAX_TOKENS)):
        got = f"{excerpt(tokens_in)}, {excerpt(tokens_out)}"
        raise Refused(f"token counts must be whole numbers 0..{MAX_TOKENS:,} (got {got})")
    created = record.get("created")
    if created is not None and not (_number(created) and 0 <= created <= time.time() + 86_400):
        raise Refused(f"created {excerpt(created)} is not a time (Unix seconds)")
    logprobs = _logprobs(record.get("logprobs"), request)
    return key, model, Entry(text, tokens_in, tokens_out, logprobs, created, request)


def _check_request(request: Any) -> None:
    if not (isinstance(request, dict) and set(request) == _REQUEST):
        raise Refused(f"request must hold exactly {sorted(_REQUEST)}")
    identity, prompt, sample = request["identity"], request["input"], request["sample"]
    if not (isinstance(identity, dict) and set(identity) == _IDENTITY):
        raise Refused(f"request identity must hold exactly {sorted(_IDENTITY)}")
    if not (isinstance(identity["backend"], str) and isinstance(identity["model"], str) and identity["model"]):
        raise Refused("request identity needs a backend and a model")
    if identity["server"] is not None and not isinstance(identity["server"], str):
        raise Refused("request identity's server is not a URL")
    if not (isinstance(prompt, str) or _messages(prompt)):
        raise Refused("request input is neither a prompt nor chat messages")
    if not _count(sample, MAX_TOKENS):
        raise Refused(f"request sample index {excerpt(sample)} is not a whole number")


def _messages(value: Any) -> bool:
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(m, dict) and isinstance(m.get("role"), str) and "content" in m for m in value)
    )


def _check_kind(kind: Any, request: dict, text: str) -> None:
    sampling = request["sampling"]
    if kind == "score":
        if sampling != SCORE_MARKER or request["sample"] != 0:
            raise Refused("kind 'score', but the request is not a yes/no scoring")
        try:
            value = float(text)
        except ValueError:
            raise Refused(f"a score's text {excerpt(text)} is not a number") from None
        if not math.isfinite(value) or repr(value) != text:
            raise Refused(f"a score's text {excerpt(text)} is not a finite number as synthir writes it")
    elif kind == "text":
        if not _is_sampling(sampling):
            raise Refused("kind 'text', but the request's sampling is not a sampling synthir writes")
    else:
        raise Refused(f"kind {excerpt(kind)}: expected 'text' or 'score'")


def _is_sampling(sampling: Any) -> bool:
    if not isinstance(sampling, dict) or not isinstance(sampling.get("stop"), list):
        return False
    try:
        return Sampling(**{**sampling, "stop": tuple(sampling["stop"])}).as_dict() == sampling
    except Exception:  # wrong names or types: not a Sampling
        return False


def _logprobs(value: Any, request: dict) -> dict[str, float] | None:
    if value is None:
        return None
    asked = isinstance(request["sampling"], dict) and request["sampling"].get("logprobs", 0) > 0
    valid = (
        isinstance(value, dict)
        and len(value) <= MAX_LOGPROBS
        and all(isinstance(t, str) and _number(v) and v <= 0 for t, v in value.items())
    )
    if not (asked and valid):
        raise Refused("logprobs must be token -> log-probability (finite, <= 0), for a request that asked for them")
    return value


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _count(value: Any, limit: int = 1 << 62) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= limit


def _listed(counts: dict[str, int]) -> str:
    """Models and their counts as a message shows them: a few, each name cut short."""
    shown = [f"{excerpt(model)}: {count}" for model, count in list(counts.items())[:3]]
    return "{" + ", ".join(shown) + (", …" if len(counts) > 3 else "") + "}"


@dataclass(frozen=True)
class Exported:
    """What an export wrote, and the selected completions it could not: cached without their request."""

    written: int
    unverifiable: int


def export_cache(
    cache: CompletionCache,
    path: str | Path = DEFAULT_FILE,
    models: list[str] | None = None,
    since: float = 0.0,
    force: bool = False,
    keys: set[str] | None = None,
) -> Exported:
    """Write the entries of `cache` (of `models`, written at or after `since`, of `keys`, when given) to `path`
    (`-`: standard output). Entries cached without their request (by an older synthir, not hit since) cannot be
    verified and are left out. Refuses to replace a file holding more completions unless `force`, and a link or
    anything but a regular file always."""

    def selected() -> Iterator[tuple[str, str, Entry]]:
        for key, model, entry in cache.items():
            if (not models or model in models) and (entry.created or 0.0) >= since and (keys is None or key in keys):
                yield key, model, entry

    with cache.snapshot():  # counts, header and lines from one state of the cache, whoever writes meanwhile
        counts = Counter(model for _, model, e in selected() if e.request is not None)
        unverifiable = sum(e.request is None for _, _, e in selected())
        _check_selection(cache, counts, unverifiable, models, since)
        total = sum(counts.values())
        header = {
            "format": FORMAT,
            "synthir": __version__,
            "exported": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "completions": total,
            "models": dict(sorted(counts.items())),
        }
        lines = (_record(key, model, e) for key, model, e in selected() if e.request is not None)
        if str(path) == "-":
            _write_lines(sys.stdout, chain([header], lines))
        else:
            _check_target(Path(path), total, force)
            write_jsonl(path, chain([header], lines))
    return Exported(total, unverifiable)


def _check_selection(
    cache: CompletionCache, counts: Counter[str], unverifiable: int, models: list[str] | None, since: float
) -> None:
    if sum(counts.values()):
        return
    if unverifiable:
        raise ConfigError(
            f"{cache.path}: the {unverifiable} completions selected were cached without their requests (by an "
            "older synthir) and cannot be verified: rerun the stages that made them (a cache hit records the "
            "request, no LLM call), then export"
        )
    chosen = [f"--model {excerpt(m)}" for m in models or []] + ([f"--since {since:.0f}"] if since else [])
    if chosen:
        raise ConfigError(f"{' and '.join(chosen)}: selects no completion of {cache.path}")
    raise ConfigError(f"{cache.path}: holds no completion to export")


def _check_target(path: Path, count: int, force: bool) -> None:
    if path.is_symlink():
        raise ConfigError(f"{path}: is a link; export to a plain file path")
    if not path.exists():
        return
    if not path.is_file():
        raise ConfigError(f"{path}: not a regular file (a folder or a device); export to a plain file path")
    if force:
        return
    held = _held(path)
    if held is None:
        raise ConfigError(f"{path}: not a completions file; --force replaces it")
    if held > count:
        raise ConfigError(f"{path}: holds {held} completions, this export {count}; --force replaces it")


def _held(path: Path) -> int | None:
    """How many completions an existing export holds (lines after its header); None if it is not one."""
    try:
        lines = json_lines(path, BOUNDS)
        _, header = next(lines)
        return sum(1 for _ in lines) if header.get("format", "").startswith("synthir-completions/") else None
    except (DataError, StopIteration, AttributeError):
        return None


def _record(key: str, model: str, entry: Entry) -> dict:
    kind = "score" if entry.request and entry.request.get("sampling") == SCORE_MARKER else "text"
    record = {"key": key, "model": model, "kind": kind, "request": entry.request, "text": entry.text}
    record |= {"tokens_in": entry.tokens_in, "tokens_out": entry.tokens_out}
    if entry.created is not None:
        record["created"] = round(entry.created, 3)
    record |= {"logprobs": entry.logprobs} if entry.logprobs else {}
    if len(json.dumps(record, ensure_ascii=False).encode()) >= BOUNDS.line_bytes:  # an import would refuse it
        raise ConfigError(f"completion {key[:12]}… is longer than the {BOUNDS.line_bytes:,} bytes a line may hold")
    return record


def _write_lines(handle: IO[str], records: Iterable[dict]) -> None:
    for record in records:
        handle.write(json.dumps(record, ensure_ascii=False) + "\n")


def import_committed(folder: Path | str = DEFAULT_FOLDER) -> None:
    """What a stage that calls an LLM does first: import the committed completions of `folder` into the local
    cache, so a rerun replays them (a stage that lists the folder in its dvc.yaml deps reruns when it changes)."""
    folder = Path(folder)
    if folder.is_dir() and not any(p.name.endswith((".jsonl", ".jsonl.gz")) for p in folder.iterdir()):
        return  # nothing committed: the cache is not even opened
    with CompletionCache() as cache:
        reports = import_folder(cache, folder)
    new, same = sum(r.new for r in reports), sum(r.same for r in reports)
    log.info("%s: %d files, %d completions: %d new, %d already cached", folder, len(reports), new + same, new, same)
