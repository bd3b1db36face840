"""The OpenAI-compatible backend against a real local HTTP server that fails on script."""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from synthir.llm.base import LLMError, Request, Sampling, sample_seed
from synthir.llm.cached import CachedBackend
from synthir.llm.factory import make_backend
from synthir.llm.openai_compat import OpenAICompatBackend
from synthir.llm.store import CompletionCache, cache_key

KEY = "sk-test-secret-0123456789"


class FakeOpenAI(ThreadingHTTPServer):
    """Test double of an OpenAI-compatible API. `script[text]` lists what successive attempts for an input get:
    "ok", "429", "429ra" (Retry-After: 0.2), "500", "400", "hang" (sleeps past the client timeout), "garbage"
    (malformed JSON), "nochoices", "short" (fewer choices than n), "401" (OpenAI's reply, echoing the key),
    "longkey" (a plain-text 400 with the key around character 200), "redirect" (to itself, forever), "ftp"
    (redirect to an ftp:// URL). Once a list runs out, attempts succeed. With `max_n`, a request asking for more
    samples gets llama.cpp's 400 (counted in `refused`)."""

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
        self.max_n: int | None = None
        self.refused = 0
        self.models: list[str] | str | None = ["fake-model"]
        """What GET /v1/models lists (None: it answers 404; "500": an HTTP 500)."""
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


class Handler(BaseHTTPRequestHandler):
    server: FakeOpenAI

    def log_message(self, *args) -> None:  # keep pytest output quiet
        pass

    def do_GET(self) -> None:
        models = self.server.models
        if self.path != "/v1/models" or models is None:
            return self.reply(404, b'{"error": "not found"}')
        if models == "500":
            return self.reply(500, b'{"error": "busy"}')
        self.reply(200, json.dumps({"object": "list", "data": [{"id": m, "object": "model"} for m in models]}).encode())

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
        if self.server.max_n is not None and body.get("n", 1) > self.server.max_n:
            with self.server.lock:
                self.server.refused += 1
            message = f"Field 'n': Value must be between 1 <= value <= {self.server.max_n}, but got {body['n']}"
            return self.reply(400, json.dumps({"error": {"code": 400, "message": message}}).encode())
        if step == "401":
            error = {"message": f"Incorrect API key provided: {KEY}.", "type": "invalid_request_error"}
            return self.reply(401, json.dumps({"error": error}).encode())
        if step == "longkey":
            return self.reply(400, ("upstream said: " + "y" * 170 + KEY + "z" * 50).encode())
        if step in ("redirect", "ftp"):
            target = "ftp://127.0.0.1/v1/x" if step == "ftp" else self.path
            return self.reply(307, b"", {"Location": target})
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


def serving() -> Iterator[FakeOpenAI]:
    """A fake server answering on a thread until the test ends."""
    fake = FakeOpenAI()
    thread = threading.Thread(target=fake.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield fake
    fake.shutdown()
    fake.server_close()


@pytest.fixture
def server() -> Iterator[FakeOpenAI]:
    yield from serving()


@pytest.fixture
def other() -> Iterator[FakeOpenAI]:
    """A second server, for fleets."""
    yield from serving()


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
    }
    requests = [Request(prompt=p) for p in ["fine", *server.script]]
    out = dict(zip(["fine", *server.script], backend.generate(requests), strict=True))
    assert {k for k, c in out.items() if not c.failed} == {"fine", "flaky", "slow", "garbled"}
    assert out["flaky"].texts == ["flaky/seed=0/0"]
    assert dict(server.attempts) == {
        "fine": 1, "flaky": 3, "slow": 2, "garbled": 3, "down": 3, "stuck": 3, "rejected": 1
    }  # fmt: skip
    url = f"{server.url}/completions"
    assert out["down"].error == f"openai backend: {url}: HTTP 500: scripted 500 for key *** (after 3 attempts)"
    assert out["stuck"].error == f"openai backend: {url}: timed out after 0.25s (after 3 attempts)"
    assert out["rejected"].error == f"openai backend: {url}: HTTP 400: scripted 400 for key ***"


def test_retry_after_is_honoured(server: FakeOpenAI, backend: OpenAICompatBackend) -> None:
    server.script = {"busy": ["429ra"]}
    backend.backoff_max = 1.0
    start = time.monotonic()
    assert backend.generate([Request(prompt="busy")])[0].texts == ["busy/seed=0/0"]
    assert time.monotonic() - start >= 0.2


def test_connection_errors_fail_the_request_not_the_run() -> None:
    backend = OpenAICompatBackend("m", base_url="http://127.0.0.1:9/v1", max_retries=1, backoff_base=0.001)
    out = backend.generate([Request(prompt="x")])
    expected = (
        "openai backend: http://127.0.0.1:9/v1/completions: cannot connect: Connection refused (after 2 attempts)"
    )
    assert out[0].failed and out[0].error == expected
    unknown = OpenAICompatBackend("m", base_url="http://no-such-host.invalid:8000/v1", max_retries=0)
    error = unknown.generate([Request(prompt="x")])[0].error
    assert error.startswith("openai backend: http://no-such-host.invalid:8000/v1/completions: cannot connect: ")
    assert "HTTPConnection" not in error and "object at 0x" not in error  # the reason, not urllib3's wrapping


def test_failures_name_the_url_and_the_servers_reason(server: FakeOpenAI, backend: OpenAICompatBackend) -> None:
    server.script = {"denied": ["401"] * 2, "loop": ["redirect"] * 100, "elsewhere": ["ftp"]}
    chat = [{"role": "user", "content": "denied"}]
    out = backend.generate([Request(prompt="denied"), Request(messages=chat), Request(prompt="loop"),
                            Request(prompt="elsewhere")])  # fmt: skip
    denied = "HTTP 401: Incorrect API key provided: ***. (check the API key in $FAKE_OPENAI_KEY)"
    assert out[0].error == f"openai backend: {server.url}/completions: {denied}"
    assert out[1].error == f"openai backend: {server.url}/chat/completions: {denied}"
    assert out[2].error == f"openai backend: {server.url}/completions: TooManyRedirects: Exceeded 30 redirects."
    assert out[3].error == (
        f"openai backend: {server.url}/completions: InvalidSchema: "
        "No connection adapters were found for 'ftp://127.0.0.1/v1/x'"
    )
    assert server.attempts["denied"] == 2  # a 4xx is not retried


@pytest.mark.parametrize(
    "url", ["localhost:8000/v1", "http:///v1", "http://host:99999/v1", "ftp://host/v1", "http://[::1/v1", ""]
)
def test_bad_base_url_is_a_clear_error(url: str) -> None:
    with pytest.raises(LLMError, match=re.escape(f"openai backend: base_url '{url}' ")):
        make_backend("openai", "m", base_url=url)


def test_identity_names_the_server(server: FakeOpenAI, backend: OpenAICompatBackend, tmp_path) -> None:
    identity = {"backend": "openai", "server": server.url, "model": "fake-model"}
    assert backend.identity == identity
    assert CachedBackend(backend, CompletionCache(tmp_path / "c.sqlite")).identity == identity
    root = server.url.removesuffix("/v1").replace("http://", "HTTP://")
    for same in (root, root + "/", server.url + "/"):
        assert OpenAICompatBackend("fake-model", base_url=same).identity == identity


def test_switching_base_url_misses_the_cache(server: FakeOpenAI, backend: OpenAICompatBackend, tmp_path) -> None:
    other = FakeOpenAI()
    threading.Thread(target=other.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        cache = CompletionCache(tmp_path / "c.sqlite")
        CachedBackend(backend, cache).generate([Request(prompt="q")])
        moved = CachedBackend(OpenAICompatBackend("fake-model", base_url=other.url), cache)
        moved.generate([Request(prompt="q")])
        assert moved.stats.cache_hits == 0 and other.paths == ["/v1/completions"]
    finally:
        other.shutdown()
        other.server_close()


def test_n_above_one_falls_back_to_one_call_per_sample(server: FakeOpenAI, backend: OpenAICompatBackend, caplog):
    caplog.set_level(logging.INFO, logger="synthir.llm.openai_compat")
    server.max_n = 1
    sampling = Sampling(temperature=0.7, seed=5)
    chat = [{"role": "user", "content": "c"}]
    requests = [Request(prompt=f"p{i}", n=3, sampling=sampling) for i in range(4)]
    out = backend.generate([*requests, Request(messages=chat, n=2, sampling=sampling), Request(prompt="one")])
    seeds = [sample_seed(5, j) for j in range(3)]
    assert [c.texts for c in out[:4]] == [[f"p{i}/seed={s}/0" for s in seeds] for i in range(4)]
    assert out[4].texts == [f"c/seed={s}/0" for s in seeds[:2]] and out[5].texts == ["one/seed=0/0"]
    assert not any(c.failed for c in out) and out[0].tokens_out_each == [3, 3, 3]
    assert server.refused == 1  # the first n > 1 request found out; the others waited for the answer
    assert caplog.text.count("refuses n > 1") == 1 and server.url in caplog.text
    backend.generate([Request(prompt="later", n=2, sampling=sampling)])
    assert server.refused == 1 and all(b["n"] == 1 for b in server.bodies[-2:])  # remembered


def test_n_fallback_also_covers_servers_that_ignore_n(server: FakeOpenAI, backend: OpenAICompatBackend) -> None:
    server.script = {"short": ["short"]}
    out = backend.generate([Request(prompt="short", n=2, sampling=Sampling(temperature=0.7))])[0]
    assert out.texts == [f"short/seed={sample_seed(0, j)}/0" for j in range(2)] and not out.failed


def test_a_400_about_something_else_keeps_n(server: FakeOpenAI, backend: OpenAICompatBackend) -> None:
    server.script = {"bad": ["400"] * 5}
    sampled = Sampling(temperature=0.7)
    out = backend.generate([Request(prompt="bad", n=2, sampling=sampled)])[0]
    assert out.failed and out.error == f"openai backend: {server.url}/completions: HTTP 400: scripted 400 for key ***"
    assert backend.generate([Request(prompt="fine", n=2, sampling=sampled)])[0].texts == [
        "fine/seed=0/0",
        "fine/seed=0/1",
    ]
    assert server.bodies[-1]["n"] == 2


def test_greedy_samples_are_one_call_whatever_the_server_thinks_of_n(server: FakeOpenAI, backend: OpenAICompatBackend):
    """vLLM's server takes n > 1 when sampling and refuses it when greedy: the order must not matter."""
    sampled = backend.generate([Request(prompt="warm", n=2, sampling=Sampling(temperature=0.7))])[0]
    assert not sampled.failed and server.bodies[-1]["n"] == 2  # the server is known to take n > 1 now
    greedy = backend.generate([Request(prompt="greedy", n=3, sampling=Sampling(temperature=0.0, max_tokens=5))])[0]
    assert not greedy.failed and greedy.texts == ["greedy/seed=0/0"] * 3
    assert server.bodies[-1]["n"] == 1 and greedy.tokens_out == 3 and greedy.tokens_out_each == [3, 3, 3]


def test_concurrency_is_bounded(server: FakeOpenAI, backend: OpenAICompatBackend) -> None:
    server.delay = 0.05
    backend.max_concurrency = 2
    assert not any(c.failed for c in backend.generate([Request(prompt=f"p{i}") for i in range(8)]))
    assert server.peak == 2


def test_key_is_never_exposed(server: FakeOpenAI, backend: OpenAICompatBackend, tmp_path, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    server.script = {"down": ["500"] * 5, "rejected": ["400"], "denied": ["401"] * 5, "long": ["longkey"]}
    cached = CachedBackend(backend, CompletionCache(tmp_path / "c.sqlite"))
    out = cached.generate([Request(prompt=p) for p in ("ok", "down", "rejected", "denied", "long")])
    assert cached.stats.failures == 4 and cached.stats.calls == 5
    denied = r"^openai backend: yes/no scoring failed for 1 prompt\(s\): openai backend: "
    denied += rf"{re.escape(server.url)}/completions: HTTP 401: Incorrect API key provided: \*\*\*\. "
    denied += r"\(check the API key in \$FAKE_OPENAI_KEY\)$"
    with pytest.raises(LLMError, match=denied) as caught:
        cached.score_yes_no(["denied"])
    unreachable = OpenAICompatBackend("m", base_url="http://127.0.0.1:9/v1", api_key_env="FAKE_OPENAI_KEY")
    unreachable.max_retries = 0
    refused = unreachable.generate([Request(prompt="x")])
    exposed = [repr(backend), repr(cached), repr(vars(backend)), repr(cached.stats), caplog.text, repr(out),
               str(caught.value), repr(caught.value), repr(refused), repr(vars(unreachable))]  # fmt: skip
    assert server.auth and all(a == f"Bearer {KEY}" for a in server.auth)
    assert not any(KEY[:8] in text for text in exposed)  # not even the part before a 200-character cut
    assert out[4].error.startswith(f"openai backend: {server.url}/completions: HTTP 400: upstream said: yyy")
    assert "***" in out[4].error
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


SINGLE_SERVER_KEY = "baa40b563e8558621ba6d7120d17e7ca5d09b728ff9e97875f4e1992f944d384"
"""The cache key of prompt 'q' (default sampling, sample 0) of model 'm' at http://example.org:8000/v1, as synthir
computed it before fleets existed: one server's keys must not change."""


def fleet(*servers: FakeOpenAI, **options) -> OpenAICompatBackend:
    settings = {"max_retries": 1, "timeout": 2.0, "backoff_base": 0.001, "backoff_max": 0.01, **options}
    return OpenAICompatBackend("fake-model", base_url=[s.url for s in servers], **settings)


def test_one_servers_identity_and_keys_are_unchanged() -> None:
    backend = OpenAICompatBackend("m", base_url="HTTP://User:pw@Example.org:8000/v1/")
    assert backend.identity == {"backend": "openai", "server": "http://example.org:8000/v1", "model": "m"}
    assert cache_key(backend.identity, "q", Sampling().as_dict(), 0) == SINGLE_SERVER_KEY


def test_a_fleet_spreads_requests_and_bounds_each_server(server: FakeOpenAI, other: FakeOpenAI) -> None:
    server.delay = other.delay = 0.03
    backend = fleet(server, other, max_concurrency=2)
    out = backend.generate([Request(prompt=f"p{i}") for i in range(16)])
    assert [c.texts for c in out] == [[f"p{i}/seed=0/0"] for i in range(16)]  # in order, whoever answered
    assert len(server.bodies) + len(other.bodies) == 16 and server.peak == other.peak == 2
    assert 4 <= len(server.bodies) <= 12  # both used, neither starved
    assert backend.sent == {server.url: len(server.bodies), other.url: len(other.bodies)}


def test_a_fleets_completions_replay_whatever_its_servers(server: FakeOpenAI, other: FakeOpenAI, tmp_path) -> None:
    cache = CompletionCache(tmp_path / "c.sqlite")
    first = CachedBackend(fleet(server, other), cache)
    texts = first.generate([Request(prompt=f"p{i}", n=2, sampling=Sampling(temperature=0.7)) for i in range(4)])
    assert first.identity == {"backend": "openai", "server": "fleet", "model": "fake-model"}
    for servers in ([other, server], [other]):  # another order, another size: the same keys
        again = CachedBackend(fleet(*servers), cache)
        assert (
            again.generate([Request(prompt=f"p{i}", n=2, sampling=Sampling(temperature=0.7)) for i in range(4)])
            == texts
        )
        assert again.stats.calls == 0 and again.stats.cache_hits == 8
    single = CachedBackend(OpenAICompatBackend("fake-model", base_url=server.url), cache)
    single.generate([Request(prompt="p0", n=2, sampling=Sampling(temperature=0.7))])
    assert single.stats.cache_hits == 0  # one URL (a string) keeps the identity naming its server


def test_a_failing_server_is_skipped_at_once(server: FakeOpenAI, other: FakeOpenAI) -> None:
    server.script = {f"p{i}": ["500"] * 10 for i in range(6)}
    backend = fleet(server, other, max_retries=0, max_concurrency=1)
    out = backend.generate([Request(prompt=f"p{i}") for i in range(6)])
    assert not any(c.failed for c in out) and len(other.bodies) == 6  # each retried on the other, no round lost
    assert len(server.bodies) < 6  # a failing server is avoided for a while


def test_a_refused_connection_moves_to_another_server(other: FakeOpenAI) -> None:
    backend = OpenAICompatBackend(
        "fake-model", base_url=["http://127.0.0.1:9/v1", other.url], max_retries=0, backoff_base=0.001
    )
    out = backend.generate([Request(prompt=f"p{i}") for i in range(5)])
    assert not any(c.failed for c in out) and len(other.bodies) == 5


def test_a_fleet_fails_only_when_every_server_does(server: FakeOpenAI, monkeypatch) -> None:
    monkeypatch.setenv("FAKE_OPENAI_KEY", KEY)
    server.script = {"q": ["500"] * 10}
    backend = OpenAICompatBackend(
        "fake-model", base_url=[server.url, "http://127.0.0.1:9/v1"], max_retries=1, backoff_base=0.001,
        backoff_max=0.01, timeout=2, api_key_env="FAKE_OPENAI_KEY",
    )  # fmt: skip
    error = backend.generate([Request(prompt="q")])[0].error
    assert error == (
        f"openai backend: all 2 servers failed (2 rounds): {server.url}/completions: HTTP 500: scripted 500 for key "
        "***; http://127.0.0.1:9/v1/completions: cannot connect: Connection refused"
    )
    assert server.attempts["q"] == 2  # one attempt per round


def test_a_fleet_serving_two_models_is_an_error_naming_both(server: FakeOpenAI, other: FakeOpenAI) -> None:
    other.models = ["another-model"]
    with pytest.raises(LLMError) as caught:
        fleet(server, other).generate([Request(prompt="p")])
    assert str(caught.value).startswith(
        f"openai backend: the servers of base_url serve different models: {server.url} lists 'fake-model', "
        f"{other.url} lists 'another-model'; "
    )
    assert server.bodies == other.bodies == []  # checked before any request
    other.models = None
    with pytest.raises(
        LLMError, match=rf"^openai backend: {re.escape(other.url)}/models: HTTP 404: not found — a fleet"
    ):
        fleet(server, other).generate([Request(prompt="p")])


def test_a_server_down_at_start_is_checked_before_its_first_request(server: FakeOpenAI, other: FakeOpenAI) -> None:
    other.models = "500"  # up for completions, but cannot say what it serves
    backend = fleet(server, other, max_concurrency=1)
    out = backend.generate([Request(prompt=f"p{i}") for i in range(4)])
    assert not any(c.failed for c in out) and len(server.bodies) == 4 and other.bodies == []  # never used unchecked
    other.models = ["another-model"]
    time.sleep(0.05)  # past its backoff
    with pytest.raises(LLMError, match="serve different models"):
        backend.generate([Request(prompt="later")])
    assert other.bodies == []


@pytest.mark.parametrize(
    ("urls", "message"),
    [
        ([], "an empty list: name at least one server"),
        (["http://a:8000/v1", "HTTP://A:8000/"], "entries 1 and 2 name the same server http://a:8000/v1"),
        (["http://u:pw1@a:1/v1", "http://a:1"], "entries 1 and 2 name the same server http://a:1/v1"),
        (["http://a/v1", "ftp://b/v1"], "entry 2: 'ftp://b/v1' is not an http(s) URL with a host"),
        (["http://a/v1", "b:8000"], "entry 2: 'b:8000' is not an http(s) URL"),
        (["http://u:secret@a:99999/v1"], "entry 1: 'http://***@a:99999/v1' is not a URL"),
        (["http://a/v1", "http://b\n.evil/v1"], r"entry 2: 'http://b\\n.evil/v1' contains a control character"),
        (["http://a/v1\x00"], r"entry 1: 'http://a/v1\\x00' contains a control character"),
        ([f"http://h{i}/v1" for i in range(1025)], "lists 1025 servers; at most 1024"),
        (["http://a/v1", 8000], "entry 2: 8000 is not a URL"),
    ],
)
def test_bad_fleet_is_a_clear_error(urls: list, message: str) -> None:
    with pytest.raises(LLMError) as caught:
        make_backend("openai", "m", base_url=urls)
    assert str(caught.value).startswith("openai backend: base_url " + message.replace("\\\\", "\\"))
    assert "secret" not in str(caught.value) and "pw1" not in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("llm", "message"),
    [
        ({"base_url": []}, "generate.llm.base_url: an empty list"),
        ({"base_url": ["http://a/v1", "http://a/v1/"]}, "generate.llm.base_url: entries 1 and 2 name the same server"),
        (
            {"base_url": ["http://x:pw@a/v1", "gopher://b"]},
            "generate.llm.base_url: entry 2: 'gopher://b' is not an http",
        ),
        ({"base_url": "http://x:pw@a:port/v1"}, "generate.llm.base_url: 'http://***@a:port/v1' is not a URL"),
        ({"base_url": "http://a/v1\r\n"}, r"generate.llm.base_url: 'http://a/v1\r\n' contains a control character"),
        ({"base_url": ["http://a/v1", None]}, "generate.llm.base_url: entry 2: None is not a URL"),
        ({"base_url": 8000}, "generate.llm.base_url: 8000 is neither a URL nor a list of URLs"),
        (
            {"base_url": ["http://a/v1"], "options": {"max_concurrency": 2.5}},
            "generate.llm.options: max_concurrency: 2.5 is not a whole",
        ),
        (
            {"base_url": ["http://a/v1"], "options": {"max_concurrency": 0}},
            "generate.llm.options: max_concurrency: 0 is out of range",
        ),
        (
            {"base_url": ["http://a/v1"], "options": {"max_concurrency": 10**9}},
            "generate.llm.options: max_concurrency: 1000000000 is out",
        ),
    ],
)
def test_bad_fleet_params_name_the_key(llm: dict, message: str) -> None:
    import yaml

    from synthir.config import parse_params
    from synthir.errors import ConfigError
    from tests.conftest import REPO

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["generate"]["llm"] = {"backend": "openai", "model": "m", **llm}
    with pytest.raises(ConfigError) as caught:
        parse_params(params)
    assert str(caught.value).startswith("params.yaml: " + message) and "\n" not in str(caught.value)
    assert "pw" not in str(caught.value)


def test_a_fleet_in_params_reaches_the_backend(server: FakeOpenAI, other: FakeOpenAI, tmp_path) -> None:
    from synthir.config import LLMParams
    from synthir.llm.cached import open_backend

    params = LLMParams(backend="openai", model="fake-model", base_url=[server.url, other.url],
                       options={"max_concurrency": 1})  # fmt: skip
    cached = open_backend(params, tmp_path / "c.sqlite")
    assert cached.identity["server"] == "fleet" and cached.backend.base_url == [server.url[:-3], other.url[:-3]]
    assert not any(c.failed for c in cached.generate([Request(prompt=f"p{i}") for i in range(4)]))
    assert server.bodies and other.bodies


def test_max_concurrency_must_be_a_whole_number() -> None:
    for bad in (2.5, True, 0):
        with pytest.raises(LLMError, match=r"max_concurrency \(per server\) >= 1"):
            OpenAICompatBackend("m", base_url=["http://a/v1"], max_concurrency=bad)
    with pytest.raises(LLMError, match="timeout must be a positive number"):
        OpenAICompatBackend("m", timeout=float("nan"))
