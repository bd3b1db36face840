"""Content-addressed completion cache (SQLite, WAL) and the `CachedBackend` wrapper that reads it first.

Key = sha256 of canonical JSON of (model id, prompt or messages, sampling.as_dict(), sample index). Each backend
batch is committed as soon as it returns, so a killed process loses at most the batch in flight; WAL keeps the
file consistent. Failed completions are never stored, so a rerun retries them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..models import cache_root
from .base import Backend, Completion, Prompt, Request, Sampling, UnsupportedError

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


def default_cache_path() -> Path:
    return cache_root() / "llm.sqlite"


def cache_key(model_id: str, prompt: Prompt, sampling: dict[str, Any], index: int) -> str:
    """sha256 of the canonical JSON of what determines one sample."""
    payload = {"model": model_id, "input": prompt, "sampling": sampling, "sample": index}
    canonical = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Entry:
    """One cached sample."""

    text: str
    tokens_in: int
    tokens_out: int
    logprobs: dict[str, float] | None = None


class CompletionCache:
    """A SQLite file of samples by key; safe to share between threads and processes."""

    def __init__(self, path: str | Path | None = None, timeout: float = 60.0) -> None:
        self.path = Path(path) if path is not None else default_cache_path()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, timeout=timeout, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # durable against process crashes in WAL mode
        self._db.execute(_SCHEMA)

    def get_many(self, keys: Sequence[str]) -> dict[str, Entry]:
        found: dict[str, Entry] = {}
        with self._lock:
            for start in range(0, len(keys), 500):
                chunk = list(keys[start : start + 500])
                marks = ",".join("?" * len(chunk))
                rows = self._db.execute(
                    f"SELECT key, text, tokens_in, tokens_out, logprobs FROM completions WHERE key IN ({marks})",
                    chunk,
                )
                for key, text, tokens_in, tokens_out, logprobs in rows:
                    found[key] = Entry(text, tokens_in, tokens_out, json.loads(logprobs) if logprobs else None)
        return found

    def put_many(self, model_id: str, items: Sequence[tuple[str, Entry]]) -> None:
        """Store entries in one transaction (an existing key keeps its first value)."""
        if not items:
            return
        now = time.time()
        rows = [
            (key, model_id, e.text, e.tokens_in, e.tokens_out, json.dumps(e.logprobs) if e.logprobs else None, now)
            for key, e in items
        ]
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany("INSERT OR IGNORE INTO completions VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM completions").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> CompletionCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"CompletionCache({str(self.path)!r})"


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
    tokens_out: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


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
                self.stats.tokens_out += result.tokens_out
                if result.failed or len(result.texts) < len(task.sample_indices):
                    self.stats.failures += 1
                    errors.setdefault(task.request_index, result.error or "backend returned too few texts")
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
        keys = [cache_key(self.model_id, p, marker, 0) for p in prompts]
        found = self.cache.get_many(keys)
        self.stats.cache_hits += len(found)
        missing = [i for i, k in enumerate(keys) if k not in found]
        scores = {k: float(e.text) for k, e in found.items()}
        for start in range(0, len(missing), self.batch_size):
            chunk = missing[start : start + self.batch_size]
            values = self.backend.score_yes_no([prompts[i] for i in chunk])
            self.stats.batches += 1
            self.stats.calls += len(chunk)
            fresh = [(keys[i], Entry(repr(float(v)), 0, 0)) for i, v in zip(chunk, values, strict=True)]
            self.cache.put_many(self.model_id, fresh)
            scores.update({keys[i]: float(v) for i, v in zip(chunk, values, strict=True)})
        return [scores[k] for k in keys]

    def _key(self, request: Request, index: int) -> str:
        return cache_key(self.model_id, request.input, request.sampling.as_dict(), index)

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


def open_backend(
    kind: str,
    model: str,
    options: dict[str, Any] | None = None,
    batch_size: int = 16,
    cache_path: str | Path | None = None,
    **connection: Any,
) -> CachedBackend:
    """A backend behind the completion cache; bad backend options raise one clear LLMError."""
    from .base import LLMError, make_backend

    settings = {**(options or {}), **{k: v for k, v in connection.items() if v is not None}}
    try:
        backend = make_backend(kind, model, **settings)
    except TypeError as error:
        raise LLMError(f"{kind} backend: bad option ({error}); options: {sorted(settings)}") from None
    return CachedBackend(backend, CompletionCache(cache_path or default_cache_path()), batch_size=batch_size)
