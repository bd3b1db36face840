"""The vLLM backend against a test double of the `vllm` module (vllm itself needs a GPU)."""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass, field

import pytest

from synthir.llm import Request, Sampling, make_backend


@dataclass
class FakeLogprob:
    logprob: float
    rank: int
    decoded_token: str | None


@dataclass
class FakeCompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    logprobs: list[dict[int, FakeLogprob]] | None = None


@dataclass
class FakeRequestOutput:
    prompt_token_ids: list[int]
    outputs: list[FakeCompletionOutput]


@dataclass
class FakeSamplingParams:
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int | None = 16
    stop: list[str] | None = None
    seed: int | None = None
    logprobs: int | None = None


@dataclass
class FakeLLM:
    """Records its constructor options and calls; sample j of a request is `<input>:<j>` with j + 1 tokens."""

    options: dict
    calls: list[tuple[str, list, list]] = field(default_factory=list)

    def __init__(self, **options) -> None:
        self.options = options
        self.calls = []

    def _outputs(self, inputs: list[str], params: list[FakeSamplingParams]) -> list[FakeRequestOutput]:
        if any("too long" in text for text in inputs):
            raise ValueError("prompt is longer than max_model_len")
        results = []
        for text, p in zip(inputs, params, strict=True):
            outputs = []
            for j in reversed(range(p.n)):  # vLLM does not promise order; the backend sorts by index
                logprobs = None
                if p.logprobs:
                    top = {7: FakeLogprob(-0.1, 1, "Yes"), 8: FakeLogprob(-2.5, 2, "No"), 9: FakeLogprob(-4.0, 3, None)}
                    logprobs = [top, {1: FakeLogprob(-0.3, 1, "x")}]
                outputs.append(FakeCompletionOutput(j, f"{text}:{j}", list(range(j + 1)), logprobs))
            results.append(FakeRequestOutput(list(range(len(text.split()))), outputs))
        return results

    def generate(self, prompts, sampling_params, use_tqdm=True):
        self.calls.append(("generate", prompts, sampling_params))
        return self._outputs(prompts, sampling_params)

    def chat(self, messages, sampling_params, use_tqdm=True):
        self.calls.append(("chat", messages, sampling_params))
        return self._outputs([m[-1]["content"] for m in messages], sampling_params)


@pytest.fixture
def fake_vllm(monkeypatch) -> types.ModuleType:
    module = types.ModuleType("vllm")
    module.LLM = FakeLLM
    module.SamplingParams = FakeSamplingParams
    monkeypatch.setitem(sys.modules, "vllm", module)
    return module


def test_builds_the_engine_with_prefix_caching(fake_vllm) -> None:
    backend = make_backend("vllm", "org/model", tensor_parallel_size=2, gpu_memory_utilization=0.5, seed=9)
    assert backend.model_id == "org/model"
    assert backend.llm.options == {
        "model": "org/model",
        "tensor_parallel_size": 2,
        "enable_prefix_caching": True,
        "gpu_memory_utilization": 0.5,
        "seed": 9,
        "dtype": "auto",
    }


def test_maps_params_counts_and_logprobs(fake_vllm) -> None:
    backend = make_backend("vllm", "org/model")
    sampling = Sampling(temperature=0.7, top_p=0.8, max_tokens=12, stop=["\n"], seed=3, logprobs=2)
    chat = [{"role": "user", "content": "two words"}]
    out = backend.generate(
        [Request(prompt="a b c", n=3, sampling=sampling), Request(messages=chat), Request(prompt="x", n=1)]
    )
    kinds = [call[0] for call in backend.llm.calls]
    assert kinds == ["generate", "chat"]
    _, prompts, params = backend.llm.calls[0]
    assert prompts == ["a b c", "x"]
    assert params[0] == FakeSamplingParams(
        n=3, temperature=0.7, top_p=0.8, max_tokens=12, stop=["\n"], seed=3, logprobs=2
    )
    assert params[1] == FakeSamplingParams(n=1, temperature=0.0, top_p=1.0, max_tokens=256, stop=None, seed=0)
    assert backend.llm.calls[1][1] == [chat]
    assert out[0].texts == ["a b c:0", "a b c:1", "a b c:2"]
    assert out[0].tokens_in == 3 and out[0].tokens_out_each == [1, 2, 3] and out[0].tokens_out == 6
    assert out[0].logprobs == [{"Yes": -0.1, "No": -2.5, "9": -4.0}] * 3
    assert out[1].texts == ["two words:0"] and out[1].tokens_in == 2 and out[1].logprobs is None
    assert out[2].texts == ["x:0"]


def test_one_bad_prompt_fails_alone(fake_vllm) -> None:
    backend = make_backend("vllm", "org/model")
    out = backend.generate([Request(prompt="fine"), Request(prompt="too long"), Request(prompt="also fine")])
    assert [c.failed for c in out] == [False, True, False]
    assert out[1].error == "vllm backend: ValueError: prompt is longer than max_model_len"


def test_score_yes_no(fake_vllm) -> None:
    backend = make_backend("vllm", "org/model")
    assert backend.score_yes_no(["q", [{"role": "user", "content": "q"}]]) == pytest.approx([2.4, 2.4])
    params = backend.llm.calls[0][2][0]
    assert (params.max_tokens, params.temperature, params.logprobs) == (1, 0.0, 20)


def test_missing_vllm_is_a_clear_error(monkeypatch) -> None:
    from synthir.llm import LLMError

    monkeypatch.setitem(sys.modules, "vllm", None)
    with pytest.raises(LLMError, match="vllm backend needs vllm"):
        make_backend("vllm", "org/model")
