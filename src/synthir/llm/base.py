"""The backend interface: requests (a prompt or chat messages, n samples, sampling) in, completions out."""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, runtime_checkable

from ..errors import SynthirError

log = logging.getLogger(__name__)

Messages = list[dict[str, Any]]
Prompt = str | Messages
"""What `score_yes_no` takes: a plain prompt or chat messages."""

GREEDY_BELOW = 1e-5
"""A temperature below this decodes greedily (vLLM's threshold): one answer, however many samples are asked for."""

YES_NO_TOP_K = 20
"""Top log-probs asked for when a backend can only report the most likely first tokens."""


class LLMError(SynthirError):
    """An LLM backend cannot be built or cannot do what was asked."""


class UnsupportedError(LLMError):
    """The backend cannot do this (e.g. give log-probs); the message says which backend and what."""


@dataclass(frozen=True)
class Sampling:
    """Decoding settings; part of every cache key (see `as_dict`)."""

    temperature: float = 0.0
    top_p: float = 1.0
    max_tokens: int = 256
    stop: tuple[str, ...] = ()
    seed: int = 0
    logprobs: int = 0
    """Top-k log-probs of the first generated token to return (0: none)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "stop", tuple(self.stop))
        if self.temperature < 0 or not 0 < self.top_p <= 1 or self.max_tokens < 1 or self.logprobs < 0:
            raise LLMError(f"invalid sampling settings: {self}")

    def as_dict(self) -> dict[str, Any]:
        """Plain, stable dict (fixed keys, floats as floats) for hashing and provenance."""
        return {
            "temperature": float(self.temperature),
            "top_p": float(self.top_p),
            "max_tokens": int(self.max_tokens),
            "stop": list(self.stop),
            "seed": int(self.seed),
            "logprobs": int(self.logprobs),
        }

    def for_sample(self, index: int) -> Sampling:
        """The settings for sample `index` alone: its own seed, derived from (seed, index)."""
        return replace(self, seed=sample_seed(self.seed, index))


def sample_seed(seed: int, index: int) -> int:
    """A 31-bit seed for sample `index`, independent of which other samples exist."""
    digest = hashlib.sha256(f"synthir-sample:{seed}:{index}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


@dataclass(frozen=True)
class Request:
    """One input (`prompt` or chat `messages`, not both) and how many completions to draw from it."""

    prompt: str | None = None
    messages: Messages | None = None
    n: int = 1
    sampling: Sampling = field(default_factory=Sampling)

    def __post_init__(self) -> None:
        if (self.prompt is None) == (self.messages is None):
            raise LLMError("a request needs exactly one of `prompt` or `messages`")
        if self.n < 1:
            raise LLMError(f"a request needs n >= 1, got {self.n}")

    @property
    def input(self) -> Prompt:
        """The prompt or the messages: what the cache key hashes."""
        return self.prompt if self.prompt is not None else self.messages  # type: ignore[return-value]


@dataclass
class Completion:
    """The result of one request. A failed one has `failed=True`, an `error` and the texts that did succeed."""

    texts: list[str]
    tokens_in: int = 0
    tokens_out: int = 0
    logprobs: list[dict[str, float]] | None = None
    """Per text: token -> log-prob for the first generated token (top-k), when asked for."""
    failed: bool = False
    error: str | None = None
    tokens_out_each: list[int] | None = None
    """Generated tokens per text, where the backend knows them."""
    tokens_cached: int = 0
    """Of `tokens_in`, the prompt tokens the backend served from its own prompt (KV) cache."""

    @classmethod
    def failure(cls, error: str) -> Completion:
        return cls(texts=[], failed=True, error=error)

    def per_text_tokens(self) -> list[int]:
        """Generated tokens per text: exact when known, else `tokens_out` split evenly."""
        if self.tokens_out_each is not None and len(self.tokens_out_each) == len(self.texts):
            return list(self.tokens_out_each)
        count = len(self.texts)
        if not count:
            return []
        share, extra = divmod(self.tokens_out, count)
        return [share + (1 if i < extra else 0) for i in range(count)]


def is_greedy(sampling: Sampling) -> bool:
    return sampling.temperature < GREEDY_BELOW


def repeated(completion: Completion, n: int) -> Completion:
    """A greedy completion standing for `n` samples: its one answer `n` times (generated, and counted, once).
    Servers and engines that refuse n > 1 without sampling (vLLM) are asked once."""
    if completion.failed or n == 1:
        return completion
    return replace(
        completion,
        texts=completion.texts * n,
        logprobs=completion.logprobs * n if completion.logprobs else completion.logprobs,
        tokens_out_each=completion.per_text_tokens() * n,
    )


@dataclass
class Usage:
    """Tokens a backend has processed: prompt (of which `cached` came from its prompt cache) and generated."""

    tokens_in: int = 0
    tokens_cached: int = 0
    tokens_out: int = 0

    def add(self, completion: Completion) -> None:
        self.tokens_in += completion.tokens_in
        self.tokens_cached += completion.tokens_cached
        self.tokens_out += completion.tokens_out


@runtime_checkable
class Backend(Protocol):
    """Every backend: a backend-independent `model_id`, batched `generate`, and optional yes/no scoring.

    Optionally a class attribute `kind` or an `identity` dict: see `backend_identity`."""

    model_id: str

    def generate(self, requests: list[Request]) -> list[Completion]:
        """One completion per request, in order; a request that fails is returned failed, never raised."""
        ...

    def score_yes_no(self, prompts: Sequence[Prompt]) -> list[float]:
        """log P(yes) − log P(no) of the first answer token; raises UnsupportedError without log-probs."""
        ...


def yes_no_margin(top: Mapping[str, float], floor: float | None = None) -> float:
    """log P(yes) − log P(no) from first-token log-probs; token variants (' Yes', 'yes', ...) are pooled.

    An answer missing from a top-k list gets `floor` (default: the smallest log-prob listed), an upper bound.
    """
    if floor is None:
        floor = min(top.values()) if top else 0.0
    pooled = {"yes": [], "no": []}
    for token, logprob in top.items():
        word = token.strip().lower()
        if word in pooled:
            pooled[word].append(logprob)
    return logsumexp(pooled["yes"] or [floor]) - logsumexp(pooled["no"] or [floor])


def logsumexp(values: Iterable[float]) -> float:
    values = list(values)
    peak = max(values)
    if peak == -math.inf:
        return peak
    return peak + math.log(sum(math.exp(v - peak) for v in values))


def backend_identity(backend: Backend) -> dict[str, str | None]:
    """Who produces a backend's texts: {"backend": kind, "server": URL or None, "model": model id}.

    A backend may define `identity` itself (the openai backend names its server); local backends (`kind` set on
    the class) have no server: their model reference is their identity. Anything else is named by its class.
    """
    identity = getattr(backend, "identity", None)
    if identity is not None:
        return dict(identity)
    kind = getattr(backend, "kind", None) or type(backend).__name__
    return {"backend": kind, "server": None, "model": backend.model_id}


def generate_isolating(
    requests: list[Request], run_batch: Callable[[list[Request]], list[Completion]], name: str
) -> list[Completion]:
    """`run_batch(requests)`; if it raises, retry one request at a time so one bad input fails alone."""
    try:
        return run_batch(requests)
    except Exception as exc:  # a backend error must not sink the whole batch
        if len(requests) > 1:
            log.warning("%s: batch of %d failed (%s); retrying one by one", name, len(requests), exc)
            return [c for r in requests for c in generate_isolating([r], run_batch, name)]
        log.warning("%s: request failed: %s: %s", name, type(exc).__name__, exc)
        return [Completion.failure(f"{name}: {type(exc).__name__}: {exc}")]


def score_with_logprobs(backend: Backend, prompts: Sequence[Prompt], name: str) -> list[float]:
    """`score_yes_no` for backends that report top-k log-probs: one greedy token per prompt. Its tokens are added
    to the backend's `scoring_usage`, where it keeps one."""
    sampling = Sampling(temperature=0.0, max_tokens=1, logprobs=YES_NO_TOP_K)
    requests = [
        Request(prompt=p, sampling=sampling) if isinstance(p, str) else Request(messages=p, sampling=sampling)
        for p in prompts
    ]
    results = backend.generate(requests)
    usage = getattr(backend, "scoring_usage", None)
    for result in results if usage is not None else ():
        usage.add(result)
    failed = [r.error for r in results if r.failed]
    if failed:
        raise LLMError(f"{name}: yes/no scoring failed for {len(failed)} prompt(s): {failed[0]}")
    if not all(r.logprobs and r.logprobs[0] for r in results):
        raise UnsupportedError(f"{name}: {backend.model_id} returned no log-probs; yes/no scoring needs them")
    return [yes_no_margin(r.logprobs[0]) for r in results]  # type: ignore[index]
