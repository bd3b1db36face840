from __future__ import annotations

import math
import subprocess
import sys

import pytest

from synthir.errors import SynthirError
from synthir.llm.base import (
    Completion,
    LLMError,
    Request,
    Sampling,
    generate_isolating,
    sample_seed,
    yes_no_margin,
)
from synthir.llm.factory import make_backend


def test_sampling_is_frozen_stable_and_validated() -> None:
    s = Sampling(temperature=0.7, top_p=0.9, max_tokens=32, stop=["\n"], seed=3)
    assert s.stop == ("\n",)
    assert s.as_dict() == {
        "temperature": 0.7,
        "top_p": 0.9,
        "max_tokens": 32,
        "stop": ["\n"],
        "seed": 3,
        "logprobs": 0,
    }
    assert Sampling(temperature=1).as_dict()["temperature"] == 1.0  # int and float give the same key
    with pytest.raises(AttributeError, match="cannot assign to field 'seed'"):
        s.seed = 4  # type: ignore[misc]
    with pytest.raises(LLMError, match=r"^invalid sampling settings: Sampling\(temperature=0.0, top_p=0, max_tokens="):
        Sampling(top_p=0)
    with pytest.raises(SynthirError, match=r"^invalid sampling settings: .*, max_tokens=0,"):
        Sampling(max_tokens=0)


def test_sample_seeds_are_stable_and_distinct() -> None:
    seeds = [sample_seed(7, i) for i in range(100)]
    assert seeds == [sample_seed(7, i) for i in range(100)]
    assert len(set(seeds)) == 100 and all(0 <= s < 2**31 for s in seeds)
    assert Sampling(seed=7).for_sample(3) == Sampling(seed=sample_seed(7, 3))
    assert sample_seed(8, 0) != sample_seed(7, 0)


def test_request_needs_exactly_one_input() -> None:
    with pytest.raises(LLMError, match="exactly one"):
        Request()
    with pytest.raises(LLMError, match="exactly one"):
        Request(prompt="a", messages=[{"role": "user", "content": "a"}])
    with pytest.raises(LLMError, match="n >= 1"):
        Request(prompt="a", n=0)
    assert Request(messages=[{"role": "user", "content": "a"}]).input == [{"role": "user", "content": "a"}]


def test_yes_no_margin_pools_variants_and_floors_missing() -> None:
    top = {" Yes": math.log(0.3), "yes": math.log(0.1), "No": math.log(0.2), "maybe": math.log(0.05)}
    assert yes_no_margin(top) == pytest.approx(math.log(0.4) - math.log(0.2))
    assert yes_no_margin({"Yes": -0.1, "the": -3.0}) == pytest.approx(-0.1 + 3.0)  # "no" floored at the minimum
    assert yes_no_margin({}) == 0.0


def test_per_text_tokens_splits_when_unknown() -> None:
    assert Completion(["a", "b", "c"], tokens_out=7).per_text_tokens() == [3, 2, 2]
    assert Completion(["a", "b"], tokens_out=7, tokens_out_each=[5, 2]).per_text_tokens() == [5, 2]


def test_make_backend_rejects_unknown_kind() -> None:
    with pytest.raises(LLMError, match="unknown LLM backend 'gpt'; choose one of hf, llamacpp, openai, vllm"):
        make_backend("gpt", "m")


def test_make_backend_imports_runtimes_lazily() -> None:
    code = (
        "import sys, synthir.llm.factory as l; b = l.make_backend('openai', 'm', base_url='http://127.0.0.1:9');"
        "print(b.model_id, 'vllm' in sys.modules, 'torch' in sys.modules, 'xllamacpp' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["m", "False", "False", "False"]


def test_generate_isolating_fails_only_the_bad_request() -> None:
    def run(requests: list[Request]) -> list[Completion]:
        if any(r.prompt == "bad" for r in requests):
            raise ValueError("prompt too long")
        return [Completion([r.prompt or ""]) for r in requests]

    out = generate_isolating([Request(prompt="a"), Request(prompt="bad"), Request(prompt="c")], run, "test")
    assert [c.texts for c in out] == [["a"], [], ["c"]]
    assert out[1].failed and out[1].error == "test: ValueError: prompt too long"
