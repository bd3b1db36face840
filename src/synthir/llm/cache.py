"""Content-addressed completion cache (SQLite, WAL) and the `CachedBackend` wrapper that reads it first.

Key = sha256 of canonical JSON of (identity, prompt or messages, sampling.as_dict(), sample index). The identity
(`backend_identity`) is {"backend": kind, "server": ..., "model": model id}: for the openai backend the server is
its normalised base_url (lower-case scheme and host, no credentials, ending in /v1), so the same model name
behind another server is another key. Local backends (vllm, hf, llamacpp) have no server: the model reference
(a pinned pkg: ref, hub id or path) stands for the weights; the resolved file is left out so that a cache stays
valid on another machine or checkout. Each backend batch is committed as soon as it returns, so a killed process
loses at most the batch in flight; WAL keeps the file consistent. Failed completions are never stored, so a
rerun retries them. A file that cannot be used (not SQLite, damaged, read-only, a folder, disk full, locked)
raises a `CacheError` naming the file and the cause.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..fileio import cache_root
from .base import Backend, Completion, LLMError, Prompt, Request, Sampling, UnsupportedError, backend_identity

if TYPE_CHECKING:
    from ..config import LLMParams

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS completions (
    key TEXT PRIMARY KEY,
    model_id TEXT NOT NULL,
    text TEXT NOT NULL,
    tokens_in INTEGER NOT NULL,
    tokens_out INTEGER NOT NULL,
    logprobs TEXT,
    created REAL NOT NULL
)
"""


_MOVE_AWAY = "move it away or set SYNTHIR_CACHE_DIR"
_CAUSES: dict[int, tuple[str, str, str]] = {
    # SQLite primary result code: (SQLite's message, what it means for the cache, what to do)
    26: ("file is not a database", "not an SQLite database (corrupt?)", _MOVE_AWAY),
    11: ("database disk image is malformed", "damaged (truncated or corrupt)", _MOVE_AWAY),
    8: (
        "attempt to write a readonly database",
        "read-only (the file or its folder cannot be written)",
        "make it writable or set SYNTHIR_CACHE_DIR",
    ),
    13: ("database or disk is full", "disk full", "free some space or set SYNTHIR_CACHE_DIR"),
    14: ("unable to open database file", "cannot be opened", "check its folder is writable or set SYNTHIR_CACHE_DIR"),
    5: ("database is locked", "locked by another process for over {timeout:g}s", "retry when it is done"),
    10: ("disk I/O error", "disk I/O error", "check the disk or set SYNTHIR_CACHE_DIR"),
}


class CacheError(LLMError):
    """The completion cache file cannot be read or written; the message names the file and the cause."""


def default_cache_path() -> Path:
    return cache_root() / "llm.sqlite"


def cache_key(identity: Mapping[str, Any], prompt: Prompt, sampling: dict[str, Any], index: int) -> str:
    """sha256 of the canonical JSON of what determines one sample; `identity` is `backend_identity(...)`.

    Keys made before the identity (backend, server) was part of them (model id only) never match: entries cached
    by older versions are recomputed once.
    """
    payload = {"identity": dict(identity), "input": prompt, "sampling": sampling, "sample": index}
    canonical = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Entry:
    """One cached sample."""

    text: str
    tokens_in: int
    tokens_out: int
    logprobs: dict[str, float] | None = None
    created: float | None = None
    """When the completion was written (Unix time); kept through export and import."""


class CompletionCache:
    """A SQLite file of samples by key; safe to share between threads and processes."""

    def __init__(self, path: str | Path | None = None, timeout: float = 60.0) -> None:
        self.path = Path(path) if path is not None else default_cache_path()
        self.timeout = timeout
        self._lock = threading.Lock()
        self._db = self._open()

    def _open(self) -> sqlite3.Connection:
        if self.path.is_dir():
            raise CacheError(f"{self.path}: is a folder, not a cache file — {_MOVE_AWAY}")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            why = f"{exc.filename} is a file" if isinstance(exc, FileExistsError) else exc.strerror or exc
            raise CacheError(f"{self.path}: cannot create its folder ({why}) — set SYNTHIR_CACHE_DIR") from None
        size, expected = _sizes(self.path)
        if size < expected:  # SQLite would only notice on reading a missing page
            raise CacheError(f"{self.path}: damaged (truncated: {size} of {expected} bytes) — {_MOVE_AWAY}")
        with self._plainly():
            db = sqlite3.connect(self.path, timeout=self.timeout, check_same_thread=False, isolation_level=None)
            try:
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=NORMAL")  # durable against process crashes in WAL mode
                db.execute(_SCHEMA)
            except sqlite3.Error:
                db.close()  # an open handle would keep the (bad) file locked
                raise
        return db

    @contextmanager
    def _plainly(self) -> Iterator[None]:
        """sqlite3 errors become a CacheError naming the file and saying what is wrong in plain words."""
        try:
            yield
        except sqlite3.Error as exc:
            raise CacheError(self._explain(exc)) from None

    def _explain(self, exc: sqlite3.Error) -> str:
        code = getattr(exc, "sqlite_errorcode", None)  # Python >= 3.11; else matched by SQLite's message
        code = code & 0xFF if code is not None else next((c for c, v in _CAUSES.items() if str(exc) == v[0]), None)
        if code not in _CAUSES:
            return f"{self.path}: SQLite error: {exc} — {_MOVE_AWAY}"
        _, meaning, advice = _CAUSES[code]
        return f"{self.path}: {meaning.format(timeout=self.timeout)} — {advice}"

    def get_many(self, keys: Sequence[str]) -> dict[str, Entry]:
        found: dict[str, Entry] = {}
        with self._lock, self._plainly():
            for start in range(0, len(keys), 500):
                chunk = list(keys[start : start + 500])
                marks = ",".join("?" * len(chunk))
                rows = self._db.execute(
                    f"SELECT key, text, tokens_in, tokens_out, logprobs, created FROM completions "
                    f"WHERE key IN ({marks})",
                    chunk,
                )
                for key, text, tokens_in, tokens_out, logprobs, created in rows:
                    found[key] = Entry(text, tokens_in, tokens_out, json.loads(logprobs) if logprobs else None, created)
        return found

    def put_many(self, model_id: str, items: Sequence[tuple[str, Entry]]) -> None:
        """Store entries in one transaction (an existing key keeps its first value); an entry without a creation
        time is stamped now."""
        if not items:
            return
        now = time.time()
        rows = [
            (
                key,
                model_id,
                e.text,
                e.tokens_in,
                e.tokens_out,
                json.dumps(e.logprobs) if e.logprobs else None,
                now if e.created is None else e.created,
            )
            for key, e in items
        ]
        with self._lock, self._plainly():
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany("INSERT OR IGNORE INTO completions VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:  # SQLite has already rolled back after some errors (disk full)
                    self._db.execute("ROLLBACK")
                raise

    def __len__(self) -> int:
        with self._lock, self._plainly():
            return self._db.execute("SELECT COUNT(*) FROM completions").fetchone()[0]

    def items(self) -> list[tuple[str, str, Entry]]:
        """Every (key, model id, entry), ordered by key."""
        with self._lock, self._plainly():
            rows = self._db.execute(
                "SELECT key, model_id, text, tokens_in, tokens_out, logprobs, created FROM completions ORDER BY key"
            ).fetchall()
        return [(k, m, Entry(t, i, o, json.loads(lp) if lp else None, c)) for k, m, t, i, o, lp, c in rows]

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> CompletionCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"CompletionCache({str(self.path)!r})"


def _sizes(path: Path) -> tuple[int, int]:
    """(file size, size its SQLite header promises); the promise is 0 where unknown: no readable file, not SQLite
    or a header size SQLite itself would not trust, or while a WAL file exists (a checkpoint may be under way)."""
    try:
        if not path.is_file() or Path(f"{path}-wal").exists():
            return 0, 0
        with path.open("rb") as file:
            header = file.read(100)
        size = path.stat().st_size
    except OSError:
        return 0, 0  # SQLite will say what is wrong
    if len(header) < 100 or not header.startswith(b"SQLite format 3\0") or header[24:28] != header[92:96]:
        return size, 0  # a stale version counter means the size field is not valid
    page_size = int.from_bytes(header[16:18], "big")
    return size, (65536 if page_size == 1 else page_size) * int.from_bytes(header[28:32], "big")


@dataclass
class CacheStats:
    calls: int = 0
    """Requests sent to the backend."""
    batches: int = 0
    """`backend.generate` invocations."""
    cache_hits: int = 0
    """Samples served from the cache."""
    failures: int = 0
    """Requests the backend returned failed."""
    tokens_in: int = 0
    """Prompt tokens of the requests sent (a hit costs none)."""
    tokens_cached: int = 0
    """Of those, the tokens the backend reused from its own prompt (KV) cache instead of evaluating them."""
    tokens_out: int = 0
    """Generated tokens."""
    first_error: str | None = None
    """The error of the first failed request (or yes/no scoring), for messages and metrics."""

    def as_dict(self) -> dict[str, int | str | None]:
        return asdict(self)

    def counts_since(self, before: dict[str, int | str | None]) -> dict[str, int]:
        """The counters (not the first error's text) gained since `before`, an earlier `as_dict()`."""
        return {k: v - int(before.get(k) or 0) for k, v in self.as_dict().items() if isinstance(v, int)}

    def note_failure(self, error: str, count: int = 1) -> None:
        self.failures += count
        if self.first_error is None:
            self.first_error = error


@dataclass
class _Task:
    """Misses of one request, sent as one backend request."""

    request_index: int
    sample_indices: list[int]
    request: Request


class CachedBackend:
    """Wraps a backend: every (request, sample index) is looked up first; only misses reach the backend.

    With `per_sample_seeds` (default) each missing sample i goes out as its own single-sample request seeded from
    (sampling.seed, i), so sample i is reproducible whatever else is cached; the misses of one request are adjacent
    in the batch (shared prefix for vLLM/llama.cpp prefix caches). Without it, the k misses of a request go out as
    one request with n=k (cheaper on APIs that bill the prompt per call; reproducible only as a group).
    Misses are sent in batches of `batch_size` requests, each committed to the cache as soon as it returns.
    """

    def __init__(
        self, backend: Backend, cache: CompletionCache, batch_size: int = 64, per_sample_seeds: bool = True
    ) -> None:
        self.backend = backend
        self.cache = cache
        self.batch_size = batch_size
        self.per_sample_seeds = per_sample_seeds
        self.model_id = backend.model_id
        self.identity = backend_identity(backend)
        """{"backend", "server", "model"}: part of every cache key, and what provenance should record."""
        self.stats = CacheStats()

    def generate(self, requests: list[Request]) -> list[Completion]:
        keys = [[self._key(r, i) for i in range(r.n)] for r in requests]
        found = self.cache.get_many([k for ks in keys for k in ks])
        samples: list[list[Entry | None]] = [[found.get(k) for k in ks] for ks in keys]
        errors: dict[int, str] = {}
        self.stats.cache_hits += sum(e is not None for row in samples for e in row)
        tasks = list(self._tasks(requests, samples))
        for start in range(0, len(tasks), self.batch_size):
            batch = tasks[start : start + self.batch_size]
            results = self.backend.generate([t.request for t in batch])
            self.stats.batches += 1
            self.stats.calls += len(batch)
            fresh: list[tuple[str, Entry]] = []
            for task, result in zip(batch, results, strict=True):
                self.stats.tokens_in += result.tokens_in
                self.stats.tokens_cached += result.tokens_cached
                self.stats.tokens_out += result.tokens_out
                if result.failed or len(result.texts) < len(task.sample_indices):
                    error = result.error or f"{self.model_id}: backend returned too few texts"
                    self.stats.note_failure(error)
                    errors.setdefault(task.request_index, error)
                    continue
                counts = result.per_text_tokens()
                for j, index in enumerate(task.sample_indices):
                    logprobs = result.logprobs[j] if result.logprobs else None
                    entry = Entry(result.texts[j], result.tokens_in, counts[j], logprobs)
                    samples[task.request_index][index] = entry
                    fresh.append((keys[task.request_index][index], entry))
            self.cache.put_many(self.model_id, fresh)
        return [self._assemble(r, row, errors.get(i)) for i, (r, row) in enumerate(zip(requests, samples, strict=True))]

    def score_yes_no(self, prompts: Sequence[Prompt]) -> list[float]:
        """Cached like samples (sampling marker `score_yes_no`); the score is stored as the text."""
        if not callable(getattr(self.backend, "score_yes_no", None)):
            raise UnsupportedError(f"{type(self.backend).__name__} cannot score yes/no (no log-probs)")
        marker = {"score_yes_no": True}
        keys = [cache_key(self.identity, p, marker, 0) for p in prompts]
        found = self.cache.get_many(keys)
        self.stats.cache_hits += len(found)
        missing = [i for i, k in enumerate(keys) if k not in found]
        scores = {k: float(e.text) for k, e in found.items()}
        for start in range(0, len(missing), self.batch_size):
            chunk = missing[start : start + self.batch_size]
            values = self._score([prompts[i] for i in chunk])
            self.stats.batches += 1
            self.stats.calls += len(chunk)
            fresh = [(keys[i], Entry(repr(float(v)), 0, 0)) for i, v in zip(chunk, values, strict=True)]
            self.cache.put_many(self.model_id, fresh)
            scores.update({keys[i]: float(v) for i, v in zip(chunk, values, strict=True)})
        return [scores[k] for k in keys]

    def _score(self, prompts: list[Prompt]) -> list[float]:
        """The backend's scores (its `scoring_usage` tokens counted, where it keeps one); its failures become one
        LLMError with the reason (noted in the stats)."""
        usage = getattr(self.backend, "scoring_usage", None)
        before = replace(usage) if usage is not None else None
        try:
            return self.backend.score_yes_no(prompts)
        except UnsupportedError:
            raise  # not a failure: the caller judges from generated answers instead
        except LLMError as exc:
            self.stats.note_failure(str(exc), len(prompts))
            raise
        except Exception as exc:
            error = f"{self.model_id}: yes/no scoring failed: {type(exc).__name__}: {exc}"
            self.stats.note_failure(error, len(prompts))
            raise LLMError(error) from exc
        finally:
            if usage is not None:
                self.stats.tokens_in += usage.tokens_in - before.tokens_in
                self.stats.tokens_cached += usage.tokens_cached - before.tokens_cached
                self.stats.tokens_out += usage.tokens_out - before.tokens_out

    def _key(self, request: Request, index: int) -> str:
        return cache_key(self.identity, request.input, request.sampling.as_dict(), index)

    def _tasks(self, requests: list[Request], samples: list[list[Entry | None]]) -> Iterator[_Task]:
        for r_index, (request, row) in enumerate(zip(requests, samples, strict=True)):
            missing = [i for i, entry in enumerate(row) if entry is None]
            if not missing:
                continue
            if self.per_sample_seeds:
                for i in missing:
                    yield _Task(r_index, [i], _single(request, request.sampling.for_sample(i), 1))
            else:
                sampling = request.sampling.for_sample(missing[0])
                yield _Task(r_index, missing, _single(request, sampling, len(missing)))

    @staticmethod
    def _assemble(request: Request, row: list[Entry | None], error: str | None) -> Completion:
        done = [e for e in row if e is not None]
        logprobs = [e.logprobs or {} for e in done] if request.sampling.logprobs else None
        return Completion(
            texts=[e.text for e in done],
            tokens_in=max((e.tokens_in for e in done), default=0),
            tokens_out=sum(e.tokens_out for e in done),
            logprobs=logprobs,
            failed=len(done) < request.n,
            error=error if len(done) < request.n else None,
            tokens_out_each=[e.tokens_out for e in done],
        )

    def __repr__(self) -> str:
        return f"CachedBackend({self.backend!r}, {self.cache!r})"


def _single(request: Request, sampling: Sampling, n: int) -> Request:
    return Request(prompt=request.prompt, messages=request.messages, n=n, sampling=sampling)


def open_backend(params: LLMParams, cache_path: str | Path | None = None) -> CachedBackend:
    """The backend a params block (`generate.llm`, `verify.judge`, ...) names, behind the completion cache; bad
    backend options raise one clear LLMError."""
    from .base import make_backend

    connection = {"base_url": params.base_url, "api_key_env": params.api_key_env}
    settings = {**params.options, **{k: v for k, v in connection.items() if v is not None}}
    try:
        backend = make_backend(params.backend, params.model, **settings)
    except TypeError as error:
        raise LLMError(f"{params.backend} backend: bad option ({error}); options: {sorted(settings)}") from None
    return CachedBackend(backend, CompletionCache(cache_path or default_cache_path()), batch_size=params.batch_size)
