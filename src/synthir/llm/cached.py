"""`CachedBackend`: a backend behind the completion store (`synthir.llm.store`), so that only misses reach the
model, and `open_backend`, which builds one from an `llm` params block.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .base import Backend, Completion, LLMError, Prompt, Request, Sampling, UnsupportedError, backend_identity
from .store import (
    SCORE_MARKER,
    CompletionCache,
    Entry,
    default_cache_path,
    key_request,
    request_key,
)

if TYPE_CHECKING:
    from ..config import LLMParams

log = logging.getLogger(__name__)


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
    from .factory import make_backend

    connection = {"base_url": params.base_url, "api_key_env": params.api_key_env}
    settings = {**params.options, **{k: v for k, v in connection.items() if v is not None}}
    try:
        backend = make_backend(params.backend, params.model, **settings)
    except TypeError as error:
        raise LLMError(f"{params.backend} backend: bad option ({error}); options: {sorted(settings)}") from None
    return CachedBackend(backend, CompletionCache(cache_path or default_cache_path()), batch_size=params.batch_size)
