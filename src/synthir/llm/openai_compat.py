"""Any OpenAI-compatible server (OpenAI, a vLLM fleet, llama.cpp server) over plain HTTP with `requests`.

The API key is read at call time from the environment variable *named* by `api_key_env`; it is never stored on
the object, logged, or put in an error message (server replies are redacted before they are shortened). Transient
failures (429, 5xx, timeouts, connection errors, malformed bodies) are retried with exponential backoff and full
jitter, honouring Retry-After; a request that still fails comes back as `Completion(failed=True)` whose error
names the URL and the cause. Servers that refuse n > 1 (llama.cpp's) get one call per sample instead, each with
its own seed (`Sampling.for_sample`): found out on the first such 400 and remembered.

`base_url` may list several servers that serve the same model (a fleet: vLLM servers, one per GPU or node).
Each takes at most `max_concurrency` requests at a time; a request goes to the least busy server that is up, and
one that fails transiently (connection refused, 5xx, 429, timeout) is tried on the next server at once, with a
backoff only after every server has failed it (a failing server is also avoided by other requests for a while).
A fleet's cache identity names the model, not the servers, so its completions replay whatever the number or order
of servers; each server's /v1/models is checked before its first request, and a server serving another model is
an error naming both servers. One URL (a string) keeps the identity that names its server.
"""

from __future__ import annotations

import email.utils
import logging
import math
import os
import random
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

import requests

from ..urls import server_roots
from .base import Completion, LLMError, Prompt, Request, Usage, is_greedy, repeated, score_with_logprobs

log = logging.getLogger(__name__)

SHOWN_TEXT = 200
"""Characters of a server's error text kept in a message."""

FLEET = "fleet"
"""The `server` of a fleet's identity: any of the servers of a `base_url` list (they serve one model)."""

MODELS_TIMEOUT = 10.0
"""Seconds to wait for a server's /v1/models (the fleet's model check) before counting it as down for now."""


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


@dataclass(eq=False)
class _Server:
    """One server of the backend: where it is, how busy, whether it is known to be up and what it serves."""

    root: str
    """The URL without /v1 (with user:password@, if given): what requests go to."""
    shown: str
    """The same without user:password@: what messages show."""
    in_flight: int = 0
    sent: int = 0
    """Requests sent to it, answered or not."""
    failures: int = 0
    """Transient failures in a row (reset by a success): how long it is avoided."""
    down_until: float = 0.0
    """time.monotonic() before which other servers are preferred."""
    serves: str | None = None
    """What its /v1/models lists (fleets only; None until checked)."""


@dataclass
class _Fleet:
    """Picks a server for each attempt: up before down, then least busy, each at most `limit()` requests at once."""

    servers: list[_Server]
    limit: Any
    """A callable giving the per-server bound now (the backend's `max_concurrency`, read live)."""
    _ready: threading.Condition = field(default_factory=threading.Condition)

    def acquire(self, tried: set[int]) -> _Server:
        """A server not in `tried` (indices), waiting while every such server is at its limit."""
        with self._ready:
            while True:
                now = time.monotonic()
                untried = [s for i, s in enumerate(self.servers) if i not in tried]
                up = [s for s in untried if s.down_until <= now] or untried  # all down: try them anyway
                free = [s for s in up if s.in_flight < self.limit()]
                if free:
                    chosen = min(free, key=lambda s: (s.in_flight, s.sent))
                    chosen.in_flight += 1
                    chosen.sent += 1
                    return chosen
                self._ready.wait(0.5)  # a release notifies; the timeout re-reads which servers are down

    def release(self, server: _Server, down_for: float | None = None) -> None:
        """Give the slot back; `down_for` (seconds) after a transient failure, None after an answer."""
        with self._ready:
            server.in_flight -= 1
            if down_for is None:
                server.failures = 0
            else:
                server.failures += 1
                server.down_until = max(server.down_until, time.monotonic() + down_for)
            self._ready.notify_all()

    def index(self, server: _Server) -> int:
        return self.servers.index(server)


class OpenAICompatBackend:
    """`/v1/chat/completions` for messages, `/v1/completions` for prompts."""

    kind = "openai"

    def __init__(
        self,
        model: str,
        base_url: str | Sequence[str] = "http://127.0.0.1:8000/v1",
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
        if not _whole(max_concurrency) or max_concurrency < 1 or not _whole(max_retries) or max_retries < 0:
            raise LLMError(
                "openai backend: max_concurrency (per server) >= 1 and max_retries >= 0 must be whole numbers"
            )
        if not timeout > 0 or not math.isfinite(timeout):
            raise LLMError(f"openai backend: timeout must be a positive number of seconds (got {timeout!r})")
        self.model = model
        self.model_id = model_id or model
        self.scoring_usage = Usage()
        self.is_fleet = not isinstance(base_url, str)
        """A `base_url` list: servers of one model, named in the identity by the model only."""
        self._servers = [_Server(root, shown) for root, shown in _server_roots(base_url)]
        self._fleet = _Fleet(self._servers, lambda: self.max_concurrency)
        self._checking = threading.Lock()
        self.base_url = self._servers[0].shown if not self.is_fleet else [s.shown for s in self._servers]
        """The server(s) without /v1 (and without user:password@): what messages and the identity show."""
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
        """Backend kind, server and model id: what the cache key and provenance record (see `backend_identity`).
        A fleet's server is `FLEET`: its servers serve one model (checked), so any of them may answer."""
        server = FLEET if self.is_fleet else self._servers[0].shown + "/v1"
        return {"backend": self.kind, "server": server, "model": self.model_id}

    @property
    def sent(self) -> dict[str, int]:
        """Requests sent to each server so far (by its URL, as messages show it)."""
        return {s.shown + "/v1": s.sent for s in self._servers}

    def generate(self, requests_: list[Request]) -> list[Completion]:
        if not requests_:
            return []
        if self.is_fleet:
            self._check_models(self._servers, reachable_only=True)
        workers = min(self.max_concurrency * len(self._servers), len(requests_))
        with ThreadPoolExecutor(workers) as pool:
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
        """One request, retried while failures are transient: at once on each server not yet tried in this round,
        then (after a backoff) in the next round; raises _Permanent (naming URL and cause) at the end."""
        path, body = self._body(request)
        errors: dict[int, str] = {}
        wait: float | None = None
        for attempt in range(self.max_retries + 1):
            tried: set[int] = set()
            while len(tried) < len(self._servers):
                server = self._fleet.acquire(tried)
                tried.add(self._fleet.index(server))
                try:
                    if self.is_fleet and server.serves is None:
                        self._check_models([server], reachable_only=False)
                    completion = self._parse(request, self._post(server, path, body))
                except _Permanent as exc:
                    self._fleet.release(server)
                    raise _Permanent(self._describe(server, path, str(exc)), exc.refuses_n) from None
                except _Transient as exc:
                    errors[self._fleet.index(server)] = self._describe(server, path, str(exc))
                    self._fleet.release(server, self._pause(server, exc))
                    wait = exc.wait
                    if self.is_fleet:
                        log.info("%s; trying another server", errors[self._fleet.index(server)])
                    continue
                except BaseException:
                    self._fleet.release(server)
                    raise
                self._fleet.release(server)
                return completion
            if attempt == self.max_retries:
                break
            delay = random.uniform(0, min(self.backoff_max, self.backoff_base * 2**attempt))
            if wait is not None:
                delay = max(delay, min(wait, self.backoff_max))
            log.debug("%s; retry %d in %.2fs", "; ".join(errors.values()), attempt + 1, delay)
            time.sleep(delay)
        raise _Permanent(self._gave_up(errors))

    def _pause(self, server: _Server, exc: _Transient) -> float:
        """How long other requests avoid a server that just failed: its Retry-After, else a backoff that grows
        with its failures in a row."""
        backoff = min(self.backoff_max, self.backoff_base * 2 ** min(server.failures, 30))
        return max(backoff, min(exc.wait, self.backoff_max)) if exc.wait is not None else backoff

    def _gave_up(self, errors: dict[int, str]) -> str:
        rounds = self.max_retries + 1
        if not self.is_fleet:
            attempts = f"{rounds} attempt{'s' if self.max_retries else ''}"
            log.warning("%s; giving up after %s", errors[0], attempts)
            return f"{errors[0]} (after {attempts})"
        causes = "; ".join(errors[i] for i in sorted(errors))
        message = f"openai backend: all {len(self._servers)} servers failed ({rounds} round{'s' * (rounds > 1)}): "
        log.warning("%s", message + causes)
        return message + causes.replace("openai backend: ", "")

    def _describe(self, server: _Server, path: str, cause: str) -> str:
        return _redact(f"openai backend: {server.shown}{path}: {cause}", self._api_key())

    def _check_models(self, servers: list[_Server], reachable_only: bool) -> None:
        """Ask each server (not yet checked) which model it serves, and compare with the servers checked before:
        a fleet serving two models would mix their completions under one cache identity. An unreachable server is
        skipped if `reachable_only` (it is checked before its first request), else raises _Transient."""
        with self._checking:
            unchecked = [s for s in servers if s.serves is None]
            if unchecked:
                with ThreadPoolExecutor(len(unchecked)) as pool:
                    answers = list(pool.map(self._served_model, unchecked))
                for server, answer in zip(unchecked, answers, strict=True):
                    if isinstance(answer, _Transient):
                        if not reachable_only:
                            raise answer
                        log.warning("openai backend: %s/v1/models: %s; checked when it is next tried", server.shown,
                                    answer)  # fmt: skip
                        continue
                    reference = next((s for s in self._servers if s.serves is not None), None)
                    if reference is not None and reference.serves != answer:
                        raise LLMError(
                            f"openai backend: the servers of base_url serve different models: {reference.shown}/v1 "
                            f"lists {reference.serves}, {server.shown}/v1 lists {answer}; a fleet's servers must "
                            f"serve one model (their completions share cache keys)"
                        )
                    server.serves = answer

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

    def _served_model(self, server: _Server) -> str | _Transient:
        """What the server's /v1/models lists: our `model` if listed (vLLM's served name), else every id it lists
        (llama.cpp serves one model under any name). A _Transient if it cannot be reached now; LLMError if it
        answers but names no model."""
        try:
            response = self._session().get(server.root + "/v1/models", headers=self._headers(),
                                           timeout=min(self.timeout, MODELS_TIMEOUT))  # fmt: skip
        except (requests.Timeout, requests.ConnectionError) as exc:
            return _Transient(f"cannot connect: {_reason(exc)}")
        except requests.RequestException as exc:
            raise LLMError(self._describe(server, "/v1/models", f"{type(exc).__name__}: {_reason(exc)}")) from None
        if response.status_code == 429 or response.status_code >= 500:
            return _Transient(f"HTTP {response.status_code}")
        try:
            listed = [str(m["id"]) for m in response.json()["data"]] if response.status_code == 200 else None
        except (ValueError, KeyError, TypeError):
            listed = None
        if not listed:
            cause = f"HTTP {response.status_code}: " + _server_text(response, self._api_key())
            raise LLMError(
                self._describe(server, "/v1/models", f"{cause.strip()} — a fleet's servers must list the model they "
                                                  "serve, so that synthir can check they serve the same one")
            )  # fmt: skip
        return repr(self.model) if self.model in listed else repr(sorted(listed))[1:-1]

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
        return session

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        key = self._api_key()
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def _post(self, server: _Server, path: str, body: dict[str, Any]) -> dict[str, Any]:
        key = self._api_key()
        try:
            response = self._session().post(server.root + path, json=body, headers=self._headers(),
                                             timeout=self.timeout)  # fmt: skip
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


def _server_roots(base_url: str | Sequence[str]) -> list[tuple[str, str]]:
    """(root, shown) of each server (see `urls.server_roots`); LLMError if a URL or the list is bad."""
    try:
        return server_roots(base_url if isinstance(base_url, str) else list(base_url))
    except (ValueError, TypeError) as error:
        raise LLMError(f"openai backend: base_url {error}") from None


def _whole(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


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
