"""Any OpenAI-compatible server (OpenAI, a vLLM fleet, llama.cpp server) over plain HTTP with `requests`.

The API key is read at call time from the environment variable *named* by `api_key_env`; it is never stored on
the object, logged, or put in an error message (server replies are redacted before they are shortened). Transient
failures (429, 5xx, timeouts, connection errors, malformed bodies) are retried with exponential backoff and full
jitter, honouring Retry-After; a request that still fails comes back as `Completion(failed=True)` whose error
names the URL and the cause. Servers that refuse n > 1 (llama.cpp's) get one call per sample instead, each with
its own seed (`Sampling.for_sample`): found out on the first such 400 and remembered.
"""

from __future__ import annotations

import email.utils
import logging
import os
import random
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

import requests

from .base import Completion, LLMError, Prompt, Request, Usage, is_greedy, repeated, score_with_logprobs

log = logging.getLogger(__name__)

SHOWN_TEXT = 200
"""Characters of a server's error text kept in a message."""


class _Transient(Exception):
    """A failure worth retrying; `wait` is the server's Retry-After in seconds, if it gave one."""

    def __init__(self, message: str, wait: float | None = None) -> None:
        super().__init__(message)
        self.wait = wait


class _Permanent(Exception):
    """A failure that retrying will not fix (4xx other than 429). `refuses_n`: it may be the server refusing n > 1
    (a 400, or fewer choices than asked for)."""

    def __init__(self, message: str, refuses_n: bool = False) -> None:
        super().__init__(message)
        self.refuses_n = refuses_n


class OpenAICompatBackend:
    """`/v1/chat/completions` for messages, `/v1/completions` for prompts."""

    kind = "openai"

    def __init__(
        self,
        model: str,
        base_url: str = "http://127.0.0.1:8000/v1",
        api_key_env: str | None = None,
        max_concurrency: int = 8,
        max_retries: int = 5,
        timeout: float = 120.0,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
        model_id: str | None = None,
        extra_body: dict[str, Any] | None = None,
    ) -> None:
        if api_key_env is not None and not os.environ.get(api_key_env):
            raise LLMError(f"openai backend: environment variable {api_key_env} (the API key) is not set")
        if max_concurrency < 1 or max_retries < 0 or timeout <= 0:
            raise LLMError("openai backend: max_concurrency >= 1, max_retries >= 0 and timeout > 0 are required")
        self.model = model
        self.model_id = model_id or model
        self.scoring_usage = Usage()
        self._root = _server_root(base_url)
        self.base_url = _without_credentials(self._root)
        """The server without /v1 (and without user:password@): what messages and the identity show."""
        self.api_key_env = api_key_env
        self.max_concurrency = max_concurrency
        self.max_retries = max_retries
        self.timeout = timeout
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.extra_body = dict(extra_body or {})
        self._local = threading.local()
        self._n_lock = threading.RLock()
        self._n_accepted: bool | None = None  # does the server take n > 1? None: not known yet
        self._n_probed = False

    def __repr__(self) -> str:
        return (
            f"OpenAICompatBackend(model={self.model!r}, base_url={self.base_url!r}, api_key_env={self.api_key_env!r})"
        )

    @property
    def identity(self) -> dict[str, str | None]:
        """Backend kind, server and model id: what the cache key and provenance record (see `backend_identity`)."""
        return {"backend": self.kind, "server": self.base_url + "/v1", "model": self.model_id}

    def generate(self, requests_: list[Request]) -> list[Completion]:
        if not requests_:
            return []
        with ThreadPoolExecutor(min(self.max_concurrency, len(requests_))) as pool:
            return list(pool.map(self._one, requests_))

    def score_yes_no(self, prompts: Sequence[Prompt]) -> list[float]:
        return score_with_logprobs(self, prompts, "openai backend")

    def _one(self, request: Request) -> Completion:
        """One request (never raises). n > 1 goes out as one call until the server is known to refuse that; a
        greedy one as one call for one answer (vLLM's server refuses greedy n > 1)."""
        if request.n > 1 and is_greedy(request.sampling):
            return repeated(self._complete(replace(request, n=1)), request.n)
        if request.n == 1 or self._n_accepted:
            return self._complete(request)
        if self._n_accepted is None:
            with self._n_lock:  # the first n > 1 request finds out; the others wait for its answer
                if self._n_accepted is None and not self._n_probed:
                    self._n_probed = True
                    return self._try_n(request)
        return self._per_sample(request) if self._n_accepted is False else self._try_n(request)

    def _complete(self, request: Request) -> Completion:
        try:
            return self._send(request)
        except _Permanent as exc:
            return Completion.failure(str(exc))

    def _try_n(self, request: Request) -> Completion:
        """Ask for n samples in one call; if the server refuses but takes n = 1, switch to one call per sample."""
        try:
            completion = self._send(request)
        except _Permanent as exc:
            if not exc.refuses_n:
                return Completion.failure(str(exc))
            fallback = self._per_sample(request)
            if not fallback.texts:  # n = 1 fails too: the 400 was about something else
                return Completion.failure(str(exc))
            self._remember_n_refused(str(exc))
            return fallback
        with self._n_lock:
            self._n_accepted = True
        return completion

    def _remember_n_refused(self, error: str) -> None:
        with self._n_lock:
            if self._n_accepted is None:
                log.info("%s; the server refuses n > 1: one request per sample from now on", error)
            self._n_accepted = False

    def _per_sample(self, request: Request) -> Completion:
        """n calls with n = 1, sample j seeded by `sampling.for_sample(j)`; stops at the first failure."""
        done: list[Completion] = []
        for j in range(request.n):
            one = Request(prompt=request.prompt, messages=request.messages, sampling=request.sampling.for_sample(j))
            try:
                done.append(self._send(one))
            except _Permanent as exc:
                return _joined(done, request.n, str(exc))
        return _joined(done, request.n)

    def _send(self, request: Request) -> Completion:
        """One request, retried while failures are transient; raises _Permanent (naming URL and cause) at the end."""
        path, body = self._body(request)
        for attempt in range(self.max_retries + 1):
            try:
                return self._parse(request, self._post(path, body))
            except _Permanent as exc:
                raise _Permanent(self._describe(path, str(exc)), exc.refuses_n) from None
            except _Transient as exc:
                error = self._describe(path, str(exc))
                if attempt == self.max_retries:
                    break
                delay = random.uniform(0, min(self.backoff_max, self.backoff_base * 2**attempt))
                if exc.wait is not None:
                    delay = max(delay, min(exc.wait, self.backoff_max))
                log.debug("%s; retry %d in %.2fs", error, attempt + 1, delay)
                time.sleep(delay)
        attempts = f"{self.max_retries + 1} attempt{'s' if self.max_retries else ''}"
        log.warning("%s; giving up after %s", error, attempts)
        raise _Permanent(f"{error} (after {attempts})")

    def _describe(self, path: str, cause: str) -> str:
        return _redact(f"openai backend: {self.base_url}{path}: {cause}", self._api_key())

    def _api_key(self) -> str:
        return os.environ.get(self.api_key_env, "") if self.api_key_env else ""

    def _body(self, request: Request) -> tuple[str, dict[str, Any]]:
        s = request.sampling
        body: dict[str, Any] = {
            "model": self.model,
            "n": request.n,
            "temperature": s.temperature,
            "top_p": s.top_p,
            "max_tokens": s.max_tokens,
            "seed": s.seed,
        }
        if s.stop:
            body["stop"] = list(s.stop)
        if request.messages is not None:
            body["messages"] = request.messages
            if s.logprobs:
                body.update(logprobs=True, top_logprobs=s.logprobs)
            path = "/v1/chat/completions"
        else:
            body["prompt"] = request.prompt
            if s.logprobs:
                body["logprobs"] = s.logprobs
            path = "/v1/completions"
        body.update(self.extra_body)
        return path, body

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
        headers = {"Content-Type": "application/json"}
        key = self._api_key()
        if key:
            headers["Authorization"] = f"Bearer {key}"
        try:
            response = session.post(self._root + path, json=body, headers=headers, timeout=self.timeout)
        except requests.Timeout:
            raise _Transient(f"timed out after {self.timeout}s") from None
        except requests.ConnectionError as exc:
            raise _Transient(f"cannot connect: {_reason(exc)}") from None
        except requests.exceptions.ChunkedEncodingError as exc:
            raise _Transient(f"connection broken: {_reason(exc)}") from None
        except requests.RequestException as exc:  # a bad URL or redirect: retrying will not help
            raise _Permanent(f"{type(exc).__name__}: {_reason(exc)}") from None
        status = response.status_code
        if status >= 400:
            cause = " ".join(filter(None, (f"HTTP {status}:", _server_text(response, key)))).removesuffix(":")
            if status == 429 or status >= 500:
                raise _Transient(cause, _retry_after(response.headers.get("Retry-After")))
            raise _Permanent(cause + self._hint(status), refuses_n=status == 400)
        try:
            data = response.json()
        except ValueError:
            raise _Transient(f"malformed JSON body (HTTP {status})") from None
        if not isinstance(data, dict) or not isinstance(data.get("choices"), list):
            raise _Transient(f"response without a `choices` list (HTTP {status})")
        return data

    def _hint(self, status: int) -> str:
        if status not in (401, 403):
            return ""
        if self.api_key_env:
            return f" (check the API key in ${self.api_key_env})"
        return " (the server wants an API key: name its environment variable in api_key_env)"

    def _parse(self, request: Request, data: dict[str, Any]) -> Completion:
        try:
            choices = sorted(data["choices"], key=lambda c: c.get("index", 0))
            chat = request.messages is not None
            texts = [(c["message"]["content"] or "") if chat else c["text"] for c in choices]
            logprobs = (
                [_first_token_logprobs(c.get("logprobs")) for c in choices] if request.sampling.logprobs else None
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise _Transient(f"malformed choice in response: {type(exc).__name__}: {exc}") from None
        if len(texts) < request.n:
            raise _Permanent(f"server returned {len(texts)} of {request.n} choices", refuses_n=True)
        usage = data.get("usage") or {}
        tokens_out = int(usage.get("completion_tokens") or 0)
        return Completion(
            texts=texts,
            tokens_in=int(usage.get("prompt_tokens") or 0),
            tokens_out=tokens_out,
            logprobs=logprobs,
            tokens_out_each=[tokens_out] if len(texts) == 1 else None,
            tokens_cached=int((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0),
        )


def _joined(parts: list[Completion], n: int, error: str | None = None) -> Completion:
    """Single-sample completions as one; failed (with the texts that did succeed) if fewer than n."""
    logprobs = [p.logprobs[0] for p in parts if p.logprobs] if any(p.logprobs for p in parts) else None
    counts = [p.tokens_out for p in parts]
    return Completion(
        texts=[p.texts[0] for p in parts],
        tokens_in=max((p.tokens_in for p in parts), default=0),
        tokens_out=sum(counts),
        logprobs=logprobs,
        failed=len(parts) < n,
        error=error if len(parts) < n else None,
        tokens_out_each=counts,
        tokens_cached=max((p.tokens_cached for p in parts), default=0),
    )


def _server_root(base_url: str) -> str:
    """`base_url` without a trailing /v1 and slash, lower-case scheme and host; LLMError if it is no http(s) URL."""
    from ..config import split_http_url

    try:
        parts = split_http_url(base_url)
    except ValueError as error:
        raise LLMError(f"openai backend: base_url {error}") from None
    credentials, _, host = parts.netloc.rpartition("@")
    netloc = f"{credentials}@{host.lower()}" if credentials else host.lower()
    return f"{parts.scheme.lower()}://{netloc}{parts.path.rstrip('/').removesuffix('/v1')}"


def _without_credentials(url: str) -> str:
    scheme, _, rest = url.partition("://")
    netloc, slash, path = rest.partition("/")
    return f"{scheme}://{netloc.rpartition('@')[2]}{slash}{path}"


def _reason(exc: BaseException) -> str:
    """The innermost reason of a requests error ('Connection refused'), not urllib3's wrappers around it."""
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen:
        seen.append(current)
        if isinstance(current, OSError) and current.strerror:
            return current.strerror
        inner = (getattr(current, "reason", None), *current.args, current.__cause__, current.__context__)
        current = next((c for c in inner if isinstance(c, BaseException)), None)
    return next((str(e) for e in reversed(seen) if str(e)), type(exc).__name__)


def _server_text(response: requests.Response, key: str) -> str:
    """The server's own words (`error.message`, `error`, `message` or `detail`, else the body), redacted, then cut."""
    text = response.text
    try:
        data = response.json()
    except ValueError:
        data = None
    if isinstance(data, dict):
        error = data.get("error")
        found = (
            (error.get("message") if isinstance(error, dict) else error) or data.get("message") or data.get("detail")
        )
        text = str(found) if found else text
    text = " ".join(_redact(text, key).split())  # redact first: a cut could split the key and keep half of it
    return text if len(text) <= SHOWN_TEXT else text[:SHOWN_TEXT] + "…"


def _first_token_logprobs(block: dict[str, Any] | None) -> dict[str, float]:
    """Top log-probs of the first token from a chat (`content` list) or legacy (`top_logprobs`) block."""
    if not block:
        return {}
    if block.get("content"):
        first = block["content"][0]
        top = {t["token"]: float(t["logprob"]) for t in first.get("top_logprobs") or []}
        top.setdefault(first["token"], float(first["logprob"]))
        return top
    if block.get("top_logprobs"):
        return {token: float(value) for token, value in block["top_logprobs"][0].items()}
    return {}


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def _redact(text: str, key: str) -> str:
    return text.replace(key, "***") if key else text
