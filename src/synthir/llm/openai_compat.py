"""Any OpenAI-compatible server (OpenAI, a vLLM fleet, llama.cpp server) over plain HTTP with `requests`.

The API key is read at call time from the environment variable *named* by `api_key_env`; it is never stored on
the object, logged, or put in an error message. Transient failures (429, 5xx, timeouts, connection errors,
malformed bodies) are retried with exponential backoff and full jitter, honouring Retry-After; a request that
still fails comes back as `Completion(failed=True)`.
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
from typing import Any

import requests

from .base import Completion, LLMError, Prompt, Request, score_with_logprobs

log = logging.getLogger(__name__)


class _Transient(Exception):
    """A failure worth retrying; `wait` is the server's Retry-After in seconds, if it gave one."""

    def __init__(self, message: str, wait: float | None = None) -> None:
        super().__init__(message)
        self.wait = wait


class _Permanent(Exception):
    """A failure that retrying will not fix (4xx other than 429)."""


class OpenAICompatBackend:
    """`/v1/chat/completions` for messages, `/v1/completions` for prompts."""

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
        self.base_url = base_url.rstrip("/").removesuffix("/v1")
        self.api_key_env = api_key_env
        self.max_concurrency = max_concurrency
        self.max_retries = max_retries
        self.timeout = timeout
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.extra_body = dict(extra_body or {})
        self._local = threading.local()

    def __repr__(self) -> str:
        return (
            f"OpenAICompatBackend(model={self.model!r}, base_url={self.base_url!r}, api_key_env={self.api_key_env!r})"
        )

    def generate(self, requests_: list[Request]) -> list[Completion]:
        if not requests_:
            return []
        with ThreadPoolExecutor(min(self.max_concurrency, len(requests_))) as pool:
            return list(pool.map(self._one, requests_))

    def score_yes_no(self, prompts: Sequence[Prompt]) -> list[float]:
        return score_with_logprobs(self, prompts, "openai backend")

    def _one(self, request: Request) -> Completion:
        path, body = self._body(request)
        error = "no attempt made"
        for attempt in range(self.max_retries + 1):
            try:
                return self._parse(request, self._post(path, body))
            except _Permanent as exc:
                return Completion.failure(str(exc))
            except _Transient as exc:
                error = str(exc)
                if attempt == self.max_retries:
                    break
                delay = random.uniform(0, min(self.backoff_max, self.backoff_base * 2**attempt))
                if exc.wait is not None:
                    delay = max(delay, min(exc.wait, self.backoff_max))
                log.debug("openai backend: %s; retry %d in %.2fs", error, attempt + 1, delay)
                time.sleep(delay)
        log.warning("openai backend: giving up after %d attempts: %s", self.max_retries + 1, error)
        return Completion.failure(f"{error} (after {self.max_retries + 1} attempts)")

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
        key = os.environ.get(self.api_key_env, "") if self.api_key_env else ""
        if key:
            headers["Authorization"] = f"Bearer {key}"
        try:
            response = session.post(self.base_url + path, json=body, headers=headers, timeout=self.timeout)
        except requests.Timeout:
            raise _Transient(f"timed out after {self.timeout}s") from None
        except requests.ConnectionError as exc:
            raise _Transient(f"connection error: {type(exc).__name__}") from None
        status = response.status_code
        if status == 429 or status >= 500:
            raise _Transient(f"HTTP {status}", _retry_after(response.headers.get("Retry-After")))
        if status >= 400:
            raise _Permanent(f"HTTP {status}: {_redact(response.text[:200], key)}")
        try:
            data = response.json()
        except ValueError:
            raise _Transient(f"malformed JSON body (HTTP {status})") from None
        if not isinstance(data, dict) or not isinstance(data.get("choices"), list):
            raise _Transient(f"response without a `choices` list (HTTP {status})")
        return data

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
            raise _Permanent(f"server returned {len(texts)} of {request.n} choices (does it support n > 1?)")
        usage = data.get("usage") or {}
        tokens_out = int(usage.get("completion_tokens") or 0)
        return Completion(
            texts=texts,
            tokens_in=int(usage.get("prompt_tokens") or 0),
            tokens_out=tokens_out,
            logprobs=logprobs,
            tokens_out_each=[tokens_out] if len(texts) == 1 else None,
        )


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
