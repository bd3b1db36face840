"""The OpenAI-compatible backend against a real local HTTP server that fails on script."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from synthir.llm import CachedBackend, CompletionCache, LLMError, Request, Sampling, make_backend
from synthir.llm.openai_compat import OpenAICompatBackend

KEY = "sk-test-secret-0123456789"


class FakeOpenAI(ThreadingHTTPServer):
    """Test double of an OpenAI-compatible API. `script[text]` lists what successive attempts for an input get:
    "ok", "429", "429ra" (Retry-After: 0.2), "500", "400", "hang" (sleeps past the client timeout), "garbage"
    (malformed JSON), "nochoices", "short" (fewer choices than n). Once a list runs out, attempts succeed."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.script: dict[str, list[str]] = {}
        self.attempts: defaultdict[str, int] = defaultdict(int)
        self.bodies: list[dict] = []
        self.auth: list[str | None] = []
        self.paths: list[str] = []
        self.in_flight = self.peak = 0
        self.delay = 0.0
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


class Handler(BaseHTTPRequestHandler):
    server: FakeOpenAI

    def log_message(self, *args) -> None:  # keep pytest output quiet
        pass

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        chat = self.path == "/v1/chat/completions"
        text = body["messages"][-1]["content"] if chat else body["prompt"]
        server = self.server
        with server.lock:
            server.bodies.append(body)
            server.auth.append(self.headers.get("Authorization"))
            server.paths.append(self.path)
            attempt = server.attempts[text]
            server.attempts[text] += 1
            server.in_flight += 1
            server.peak = max(server.peak, server.in_flight)
        try:
            steps = server.script.get(text, [])
            self.act(steps[attempt] if attempt < len(steps) else "ok", body, chat, text)
        finally:
            with server.lock:
                server.in_flight -= 1

    def act(self, step: str, body: dict, chat: bool, text: str) -> None:
        time.sleep(self.server.delay)
        if step == "hang":
            time.sleep(0.6)
            step = "ok"
        if step in ("429", "500", "400"):
            headers = {}
            return self.reply(int(step), f'{{"error": "scripted {step} for key {KEY}"}}'.encode(), headers)
        if step == "429ra":
            return self.reply(429, b"{}", {"Retry-After": "0.2"})
        if step == "garbage":
            return self.reply(200, b'{"choices": [ {"text": ')
        if step == "nochoices":
            return self.reply(200, b'{"object": "error"}')
        n = 1 if step == "short" else body.get("n", 1)
        choices = []
        for j in range(n):
            out = f"{text}/seed={body.get('seed')}/{j}"
            choice = (
                {"index": j, "message": {"role": "assistant", "content": out}} if chat else {"index": j, "text": out}
            )
            if chat and body.get("logprobs"):
                first = {"token": "Yes", "logprob": -0.2, "top_logprobs": [{"token": "Yes", "logprob": -0.2}]}
                first["top_logprobs"].append({"token": "No", "logprob": -1.8})
                choice["logprobs"] = {"content": [first]}
            elif body.get("logprobs"):
                choice["logprobs"] = {"top_logprobs": [{" yes": -2.0, " no": -0.5}]}
            choices.append(choice)
        usage = {"prompt_tokens": len(text.split()), "completion_tokens": 3 * n}
        self.reply(200, json.dumps({"choices": choices, "usage": usage}).encode())

    def reply(self, status: int, data: bytes, headers: dict[str, str] | None = None) -> None:
        try:
            self.send_response(status)
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout test)
            pass


@pytest.fixture
def server() -> Iterator[FakeOpenAI]:
    fake = FakeOpenAI()
    thread = threading.Thread(target=fake.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield fake
    fake.shutdown()
    fake.server_close()


@pytest.fixture
def backend(server: FakeOpenAI, monkeypatch) -> OpenAICompatBackend:
    monkeypatch.setenv("FAKE_OPENAI_KEY", KEY)
    return OpenAICompatBackend(
        "fake-model",
        base_url=server.url,
        api_key_env="FAKE_OPENAI_KEY",
        max_concurrency=4,
        max_retries=2,
        timeout=0.25,
        backoff_base=0.001,
        backoff_max=0.01,
    )


def test_maps_requests_to_both_endpoints(server: FakeOpenAI, backend: OpenAICompatBackend) -> None:
    sampling = Sampling(temperature=0.5, top_p=0.9, max_tokens=7, stop=["\n"], seed=11, logprobs=2)
    out = backend.generate(
        [
            Request(prompt="plain prompt", n=2, sampling=sampling),
            Request(messages=[{"role": "user", "content": "chat prompt"}], sampling=sampling),
        ]
    )
    assert out[0].texts == ["plain prompt/seed=11/0", "plain prompt/seed=11/1"]
    assert out[0].tokens_in == 2 and out[0].tokens_out == 6 and out[0].logprobs == [{" yes": -2.0, " no": -0.5}] * 2
    assert out[1].texts == ["chat prompt/seed=11/0"] and out[1].logprobs == [{"Yes": -0.2, "No": -1.8}]
    assert sorted(server.paths) == ["/v1/chat/completions", "/v1/completions"]
    plain = next(b for b in server.bodies if "prompt" in b)
    chat = next(b for b in server.bodies if "messages" in b)
    common = {"model": "fake-model", "temperature": 0.5, "top_p": 0.9, "max_tokens": 7, "stop": ["\n"], "seed": 11}
    assert plain == {**common, "n": 2, "prompt": "plain prompt", "logprobs": 2}
    assert chat == {**common, "n": 1, "messages": [{"role": "user", "content": "chat prompt"}], "logprobs": True,
                    "top_logprobs": 2}  # fmt: skip
    assert server.auth == [f"Bearer {KEY}"] * 2


def test_transient_failures_are_retried_boundedly(server: FakeOpenAI, backend: OpenAICompatBackend) -> None:
    server.script = {
        "flaky": ["429", "500", "ok"],
        "slow": ["hang", "ok"],
        "garbled": ["garbage", "nochoices", "ok"],
        "down": ["500"] * 10,
        "stuck": ["hang"] * 10,
        "rejected": ["400", "ok"],
        "short": ["short"],
    }
    requests = [Request(prompt=p) for p in ["fine", *server.script]]
    requests[-1] = Request(prompt="short", n=2)
    out = dict(zip(["fine", *server.script], backend.generate(requests), strict=True))
    assert {k for k, c in out.items() if not c.failed} == {"fine", "flaky", "slow", "garbled"}
    assert out["flaky"].texts == ["flaky/seed=0/0"]
    assert dict(server.attempts) == {
        "fine": 1, "flaky": 3, "slow": 2, "garbled": 3, "down": 3, "stuck": 3, "rejected": 1, "short": 1
    }  # fmt: skip
    assert out["down"].error == "HTTP 500 (after 3 attempts)"
    assert out["stuck"].error == "timed out after 0.25s (after 3 attempts)"
    assert out["rejected"].error.startswith("HTTP 400: ") and KEY not in out["rejected"].error
    assert out["short"].error == "server returned 1 of 2 choices (does it support n > 1?)"


def test_retry_after_is_honoured(server: FakeOpenAI, backend: OpenAICompatBackend) -> None:
    server.script = {"busy": ["429ra"]}
    backend.backoff_max = 1.0
    start = time.monotonic()
    assert backend.generate([Request(prompt="busy")])[0].texts == ["busy/seed=0/0"]
    assert time.monotonic() - start >= 0.2


def test_connection_errors_fail_the_request_not_the_run() -> None:
    backend = OpenAICompatBackend("m", base_url="http://127.0.0.1:9/v1", max_retries=1, backoff_base=0.001)
    out = backend.generate([Request(prompt="x")])
    assert out[0].failed and out[0].error == "connection error: ConnectionError (after 2 attempts)"


def test_concurrency_is_bounded(server: FakeOpenAI, backend: OpenAICompatBackend) -> None:
    server.delay = 0.05
    backend.max_concurrency = 2
    assert not any(c.failed for c in backend.generate([Request(prompt=f"p{i}") for i in range(8)]))
    assert server.peak == 2


def test_key_is_never_exposed(server: FakeOpenAI, backend: OpenAICompatBackend, tmp_path, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    server.script = {"down": ["500"] * 5, "rejected": ["400"]}
    cached = CachedBackend(backend, CompletionCache(tmp_path / "c.sqlite"))
    out = cached.generate([Request(prompt=p) for p in ("ok", "down", "rejected")])
    assert cached.stats.failures == 2 and cached.stats.calls == 3
    exposed = [repr(backend), repr(cached), repr(vars(backend)), repr(cached.stats), caplog.text, repr(out)]
    assert server.auth and all(a == f"Bearer {KEY}" for a in server.auth)
    assert not any(KEY in text for text in exposed)
    assert "FAKE_OPENAI_KEY" in repr(backend)


def test_missing_key_variable_is_a_clear_error(monkeypatch) -> None:
    monkeypatch.delenv("NO_SUCH_KEY_VAR", raising=False)
    with pytest.raises(LLMError, match="environment variable NO_SUCH_KEY_VAR"):
        make_backend("openai", "m", api_key_env="NO_SUCH_KEY_VAR")


def test_score_yes_no(server: FakeOpenAI, backend: OpenAICompatBackend) -> None:
    scores = backend.score_yes_no(["plain", [{"role": "user", "content": "chat"}]])
    assert scores == pytest.approx([-1.5, 1.6])
    body = server.bodies[0]
    assert body["max_tokens"] == 1 and body["temperature"] == 0.0
