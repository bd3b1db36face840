"""The content-addressed completion store (SQLite, WAL) that `CachedBackend` (`synthir.llm.cached`) reads first.

Key = sha256 of canonical JSON of (identity, prompt or messages, sampling.as_dict(), sample index). The identity
(`backend_identity`) is {"backend": kind, "server": ..., "model": model id}: for the openai backend the server is
its normalised base_url (lower-case scheme and host, no credentials, ending in /v1), so the same model name
behind another server is another key; a `base_url` list (a fleet of servers checked to serve one model) has the
server "fleet", so its completions replay whatever the number or order of its servers. Local backends (vllm, hf,
llamacpp) have no server: the model reference (a pinned pkg: ref, hub id or path) stands for the weights; the
resolved file is left out so that a cache stays valid on another machine or checkout. Each backend batch is
committed as soon as it returns, so a killed process loses at most the batch in flight; WAL keeps the file
consistent. Failed completions are never stored, so a rerun retries them. A file that cannot be used (not SQLite,
damaged, read-only, a folder, disk full, locked) raises a `CacheError` naming the file and the cause.
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
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..fileio import cache_root
from .base import LLMError, Prompt

if TYPE_CHECKING:
    pass

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
