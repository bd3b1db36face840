"""Content-addressed completion cache (SQLite, WAL) and the `CachedBackend` wrapper that reads it first.

Key = sha256 of canonical JSON of (identity, prompt or messages, sampling.as_dict(), sample index). The identity
(`backend_identity`) is {"backend": kind, "server": ..., "model": model id}: for the openai backend the server is
its normalised base_url (lower-case scheme and host, no credentials, ending in /v1), so the same model name
behind another server is another key; a `base_url` list (a fleet of servers checked to serve one model) has the
server "fleet", so its completions replay whatever the number or order of its servers. Local backends (vllm, hf,
llamacpp) have no server: the model reference (a pinned pkg: ref, hub id or path) stands for the weights; the
resolved file is left out so that a cache stays valid on another machine or checkout. Each backend batch is
committed as soon as it returns, so a killed process loses at most the batch in flight; WAL keeps the file
consistent. Failed completions are never stored, so a
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
    created REAL NOT NULL,
    request TEXT
)
"""
_COLUMNS = "key, model_id, text, tokens_in, tokens_out, logprobs, created, request"


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


SCORE_MARKER = {"score_yes_no": True}
"""The sampling part of a yes/no score's key: scores are cached as text (`repr` of the float)."""


class CacheError(LLMError):
    """The completion cache file cannot be read or written; the message names the file and the cause."""


def default_cache_path() -> Path:
    return cache_root() / "llm.sqlite"


def key_request(identity: Mapping[str, Any], prompt: Prompt, sampling: dict[str, Any], index: int) -> dict[str, Any]:
    """What a cache key is computed from: the backend identity, the prompt or messages, the sampling settings and
    the sample index. Stored beside each completion, so an exported completion can be checked against its key."""
    return {"identity": dict(identity), "input": prompt, "sampling": sampling, "sample": index}


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def request_key(request: Mapping[str, Any]) -> str:
    """sha256 of the canonical JSON of a `key_request`."""
    return hashlib.sha256(canonical_json(request).encode("utf-8")).hexdigest()


def cache_key(identity: Mapping[str, Any], prompt: Prompt, sampling: dict[str, Any], index: int) -> str:
    """sha256 of the canonical JSON of what determines one sample; `identity` is `backend_identity(...)`.

    Keys made before the identity (backend, server) was part of them (model id only) never match: entries cached
    by older versions are recomputed once.
    """
    return request_key(key_request(identity, prompt, sampling, index))


@dataclass(frozen=True)
class Entry:
    """One cached sample."""

    text: str
    tokens_in: int
    tokens_out: int
    logprobs: dict[str, float] | None = None
    created: float | None = None
    """When the completion was written (Unix time); kept through export and import."""
    request: dict[str, Any] | None = None
    """The `key_request` the key hashes; None for entries cached before synthir recorded it (a cache hit on the
    same request records it)."""


class CompletionCache:
    """A SQLite file of samples by key; safe to share between threads and processes."""

    def __init__(self, path: str | Path | None = None, timeout: float = 60.0) -> None:
        self.path = Path(path) if path is not None else default_cache_path()
        self.timeout = timeout
        self._lock = threading.RLock()  # re-entered by reads inside `snapshot`
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
                if "request" not in {row[1] for row in db.execute("PRAGMA table_info(completions)")}:
                    db.execute("ALTER TABLE completions ADD COLUMN request TEXT")  # a cache from before requests
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
                rows = self._db.execute(f"SELECT {_COLUMNS} FROM completions WHERE key IN ({marks})", chunk)
                found.update((row[0], _entry(row)) for row in rows)
        return found

    def put_many(self, model_id: str, items: Sequence[tuple[str, Entry]]) -> None:
        """Store entries in one transaction (an existing key keeps its first value); an entry without a creation
        time is stamped now."""
        if not items:
            return
        with self.transaction() as db:
            for key, entry in items:
                store(db, model_id, key, entry)

    def record_requests(self, requests: Mapping[str, Mapping[str, Any]]) -> None:
        """Store the `key_request` of entries cached without one (each key must be `request_key` of its request)."""
        if not requests:
            return
        rows = [(canonical_json(request), key) for key, request in requests.items()]
        with self.transaction() as db:
            db.executemany("UPDATE completions SET request = ? WHERE key = ? AND request IS NULL", rows)

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: committed if the block succeeds, rolled back otherwise."""
        with self._lock, self._plainly():
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:  # SQLite has already rolled back after some errors (disk full)
                    self._db.execute("ROLLBACK")
                raise

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        """One read transaction: every read inside the block sees the cache as it was when the block began, whatever
        other processes write meanwhile (WAL readers see a fixed snapshot)."""
        with self._lock, self._plainly():
            self._db.execute("BEGIN DEFERRED")
            try:
                self._db.execute("SELECT COUNT(*) FROM completions").fetchone()  # the snapshot starts at a read
                yield
            finally:
                if self._db.in_transaction:
                    self._db.execute("COMMIT")

    def __len__(self) -> int:
        with self._lock, self._plainly():
            return self._db.execute("SELECT COUNT(*) FROM completions").fetchone()[0]

    def items(self) -> Iterator[tuple[str, str, Entry]]:
        """Every (key, model id, entry), ordered by key, read in pages (a large cache never sits in memory)."""
        last = ""
        while True:
            with self._lock, self._plainly():
                rows = self._db.execute(
                    f"SELECT {_COLUMNS} FROM completions WHERE key > ? ORDER BY key LIMIT 1000", (last,)
                ).fetchall()
            if not rows:
                return
            for row in rows:
                yield row[0], row[1], _entry(row)
            last = rows[-1][0]

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> CompletionCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"CompletionCache({str(self.path)!r})"


def lookup(db: sqlite3.Connection, key: str) -> tuple[str, Entry] | None:
    """(model id, entry) under `key`, read through `db` (inside `CompletionCache.transaction`)."""
    row = db.execute(f"SELECT {_COLUMNS} FROM completions WHERE key = ?", (key,)).fetchone()
    return (row[1], _entry(row)) if row else None


def store(db: sqlite3.Connection, model_id: str, key: str, entry: Entry, replace: bool = False) -> None:
    """Write one entry through `db` (inside `CompletionCache.transaction`): a key already stored keeps its value
    unless `replace`. An entry without a creation time is stamped now."""
    verb = "INSERT OR REPLACE" if replace else "INSERT OR IGNORE"
    db.execute(f"{verb} INTO completions ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", _row(key, model_id, entry))


def _entry(row: Sequence[Any]) -> Entry:
    _, _, text, tokens_in, tokens_out, logprobs, created, request = row
    decoded = json.loads(logprobs) if logprobs else None
    return Entry(text, tokens_in, tokens_out, decoded, created, json.loads(request) if request else None)


def _row(key: str, model_id: str, e: Entry) -> tuple:
    logprobs = json.dumps(e.logprobs) if e.logprobs else None
    request = canonical_json(e.request) if e.request is not None else None
    created = time.time() if e.created is None else e.created
    return key, model_id, e.text, e.tokens_in, e.tokens_out, logprobs, created, request


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
    engine: str | None = None
    """Where the backend's calls ran (e.g. `vllm 0.32.0 on cpu`), once one did, for backends that say."""

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
        self.keys_used: set[str] | None = None
        """When set to a set: every key asked for is added to it (what a shard's export selects)."""

    def generate(self, requests: list[Request]) -> list[Completion]:
        payloads = [[self._request(r, i) for i in range(r.n)] for r in requests]
        keys = [[request_key(p) for p in row] for row in payloads]
        if self.keys_used is not None:
            self.keys_used.update(_flat(keys))
        found = self._lookup(dict(zip(_flat(keys), _flat(payloads), strict=True)))
        samples: list[list[Entry | None]] = [[found.get(k) for k in ks] for ks in keys]
        errors: dict[int, str] = {}
        self.stats.cache_hits += sum(e is not None for row in samples for e in row)
        tasks = list(self._tasks(requests, samples))
        for start in range(0, len(tasks), self.batch_size):
            batch = tasks[start : start + self.batch_size]
            results = self.backend.generate([t.request for t in batch])
            self.stats.engine = getattr(self.backend, "engine", None)
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
                    payload = payloads[task.request_index][index]
                    entry = Entry(result.texts[j], result.tokens_in, counts[j], logprobs, request=payload)
                    samples[task.request_index][index] = entry
                    fresh.append((keys[task.request_index][index], entry))
            self.cache.put_many(self.model_id, fresh)
        return [self._assemble(r, row, errors.get(i)) for i, (r, row) in enumerate(zip(requests, samples, strict=True))]

    def release(self) -> None:
        """Stop the engine and free the memory it holds (a vLLM engine reserves most of a GPU); the next request the
        cache misses starts it again. A no-op for a backend that holds nothing to free."""
        close = getattr(self.backend, "close", None)
        if callable(close):
            close()

    @property
    def on_gpu(self) -> bool:
        """Whether the engine runs on a CUDA device (what `release` frees is GPU memory)."""
        return str(getattr(self.backend, "device", "")).startswith("cuda")

    def score_yes_no(self, prompts: Sequence[Prompt]) -> list[float]:
        """Cached like samples (sampling marker `score_yes_no`); the score is stored as the text."""
        if not callable(getattr(self.backend, "score_yes_no", None)):
            raise UnsupportedError(f"{type(self.backend).__name__} cannot score yes/no (no log-probs)")
        payloads = [key_request(self.identity, p, SCORE_MARKER, 0) for p in prompts]
        keys = [request_key(p) for p in payloads]
        if self.keys_used is not None:
            self.keys_used.update(keys)
        found = self._lookup(dict(zip(keys, payloads, strict=True)))
        self.stats.cache_hits += len(found)
        missing = [i for i, k in enumerate(keys) if k not in found]
        scores = {k: float(e.text) for k, e in found.items()}
        for start in range(0, len(missing), self.batch_size):
            chunk = missing[start : start + self.batch_size]
            values = self._score([prompts[i] for i in chunk])
            self.stats.engine = getattr(self.backend, "engine", None)
            self.stats.batches += 1
            self.stats.calls += len(chunk)
            fresh = [
                (keys[i], Entry(repr(float(v)), 0, 0, request=payloads[i])) for i, v in zip(chunk, values, strict=True)
            ]
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

    def _request(self, request: Request, index: int) -> dict[str, Any]:
        return key_request(self.identity, request.input, request.sampling.as_dict(), index)

    def _lookup(self, payloads: dict[str, dict[str, Any]]) -> dict[str, Entry]:
        """The cached entries of these keys; a hit cached without its request (an older synthir's) gets it now."""
        found = self.cache.get_many(list(payloads))
        self.cache.record_requests({key: payloads[key] for key, entry in found.items() if entry.request is None})
        return found

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


def _flat(rows: list[list[Any]]) -> list[Any]:
    return [item for row in rows for item in row]


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
