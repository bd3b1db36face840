"""The transformers backend on tiny random Llama, Qwen2 and GPT-2 models (built offline, sharing conftest's
word-level tokenizer)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GPT2Config,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2Tokenizer,
)

from synthir.errors import ConfigError
from synthir.llm.base import LLMError, Request, Sampling
from synthir.llm.factory import make_backend
from synthir.llm.hf import HFBackend
from tests.tiny_models import CHAT_SPECIAL as SPECIAL
from tests.tiny_models import CHAT_WORDS as WORDS

pytestmark = pytest.mark.usefixtures("one_thread")

GREEDY = Sampling(max_tokens=6)
PROMPTS = ["the cat sat on the mat", "why", "what does a big red bird do"]
CHAT = [{"role": "user", "content": "is the dog big"}]


@pytest.fixture(scope="module")
def backend(tiny_lm: str) -> HFBackend:
    return HFBackend(tiny_lm, device="cpu", batch_size=8)


def test_batched_greedy_equals_unbatched(backend: HFBackend) -> None:
    requests = [Request(prompt=p, sampling=GREEDY) for p in PROMPTS] + [Request(messages=CHAT, sampling=GREEDY)]
    batched = backend.generate(requests)
    single = [backend.generate([r])[0] for r in requests]
    assert [c.texts for c in batched] == [c.texts for c in single]
    assert [c.tokens_out for c in batched] == [c.tokens_out for c in single]
    assert all(len(c.texts) == 1 and c.texts[0] for c in batched)


def test_token_counts(backend: HFBackend) -> None:
    out = backend.generate([Request(prompt=p, sampling=GREEDY) for p in PROMPTS])
    assert [c.tokens_in for c in out] == [7, 2, 8]  # words + <s>
    assert all(0 < c.tokens_out <= 6 and c.tokens_out_each == [c.tokens_out] for c in out)
    chat = backend.generate([Request(messages=CHAT, sampling=GREEDY)])[0]
    rendered = backend.tokenizer.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
    assert rendered == "<s><|user|> is the dog big <|assistant|>"
    assert chat.tokens_in == 7  # the template's <s> is not doubled


def test_samples_are_seeded_per_row(backend: HFBackend) -> None:
    sampling = Sampling(temperature=1.0, top_p=0.95, max_tokens=5, seed=4)
    out = backend.generate([Request(prompt="why", n=3, sampling=sampling)])[0]
    assert len(out.texts) == 3 and len(out.tokens_out_each) == 3 and out.tokens_in == 2
    assert len(set(out.texts)) > 1
    # Sample j uses seed + j whatever batch it runs in.
    alone = backend.generate([Request(prompt="why", n=1, sampling=Sampling(**{**sampling.as_dict(), "seed": 6}))])
    assert alone[0].texts == out.texts[2:]
    mixed = backend.generate(
        [Request(prompt="the cat", n=2, sampling=sampling), Request(prompt="why", n=3, sampling=sampling)]
    )
    assert mixed[1].texts == out.texts


def test_first_token_logprobs(backend: HFBackend) -> None:
    out = backend.generate([Request(prompt="why", sampling=Sampling(max_tokens=2, logprobs=3))])[0]
    (top,) = out.logprobs
    assert len(top) == 3 and all(v <= 0 for v in top.values())
    assert out.texts[0].split()[0] == max(top, key=top.get)  # greedy picks the most likely token


def test_score_yes_no_matches_the_logits(backend: HFBackend) -> None:
    prompts = ["is the cat big", [{"role": "user", "content": "is the cat big"}]]
    scores = backend.score_yes_no(prompts)
    ids = backend.tokenizer.convert_tokens_to_ids(["yes", "Yes", "no", "No"])
    with torch.inference_mode():
        batch = backend.tokenizer("is the cat big", return_tensors="pt")
        logprobs = backend.model(**batch).logits[0, -1].log_softmax(-1)
    expected = logprobs[ids[:2]].logsumexp(0) - logprobs[ids[2:]].logsumexp(0)
    assert scores[0] == pytest.approx(float(expected), abs=1e-4)
    assert scores[1] != pytest.approx(scores[0])


def test_factory_builds_hf(tiny_lm: str) -> None:
    backend = make_backend("hf", tiny_lm, device="cpu", model_id="tiny")
    assert backend.model_id == "tiny" and "tiny" in repr(backend)


def test_stop_strings_cut_the_text(backend: HFBackend) -> None:
    full = backend.generate([Request(prompt="why", sampling=GREEDY)])[0].texts[0]
    words = full.split()
    stop = words[2]
    cut = backend.generate([Request(prompt="why", sampling=Sampling(max_tokens=6, stop=[stop]))])[0]
    assert cut.texts[0] == full[: full.find(stop)]
    assert cut.tokens_out <= 3


# --- tiny models of other architectures, and the same Llama with a generation config of its own ----------------

MIXED_LENGTHS = ["why", "the cat sat on the mat and the dog sat on it", "is the red bird big", "how"]


def _save_next_to_tokenizer(tiny_lm: str, folder: Path, model) -> str:
    """Saves `model` with conftest's tokenizer (the one the tiny Llama uses)."""
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_lm).save_pretrained(folder)
    return str(folder)


def _qwen2_tokenizer() -> Qwen2Tokenizer:
    """A byte-level BPE tokenizer as Qwen2's (AutoTokenizer picks Qwen2Tokenizer for a qwen2 model whatever the
    folder holds) whose merges spell conftest's words, with and without a leading space (Ġ)."""
    vocab = {"<|endoftext|>": 0, "<|im_end|>": 1}
    merges: list[tuple[str, str]] = []
    for word in ["Ġ" + w for w in WORDS] + WORDS:  # the spaced words' merges rank first
        for i in range(len(word)):
            vocab.setdefault(word[i], len(vocab))
            vocab.setdefault(word[: i + 1], len(vocab))
            if i and (word[:i], word[i]) not in merges:
                merges.append((word[:i], word[i]))
    return Qwen2Tokenizer(vocab=vocab, merges=merges, eos_token="<|im_end|>", pad_token="<|endoftext|>")


@pytest.fixture(scope="module")
def tiny_qwen2(tmp_path_factory) -> str:
    """A 2-layer, 32-d random Qwen2ForCausalLM (rotary positions) and a Qwen2 tokenizer."""
    folder = tmp_path_factory.mktemp("qwen2")
    tokenizer = _qwen2_tokenizer()
    config = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, initializer_range=0.5, eos_token_id=1, pad_token_id=0,
    )  # fmt: skip
    torch.manual_seed(1)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def tiny_gpt2(tiny_lm: str, tmp_path_factory) -> str:
    """A 2-layer, 32-d random GPT-2: learned absolute positions, so a padded row needs its own position ids."""
    config = GPT2Config(
        vocab_size=len(SPECIAL + WORDS), n_embd=32, n_layer=2, n_head=4, n_positions=256, initializer_range=0.5,
        pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )  # fmt: skip
    torch.manual_seed(2)
    model = AutoModelForCausalLM.from_config(config)
    return _save_next_to_tokenizer(tiny_lm, tmp_path_factory.mktemp("gpt2") / "model", model)


def _backend(path: str) -> HFBackend:
    return HFBackend(path, device="cpu", batch_size=8)


@pytest.fixture(scope="module", params=["llama", "qwen2", "gpt2"])
def any_backend(request, backend: HFBackend) -> HFBackend:
    if request.param == "llama":
        return backend
    return _backend(request.getfixturevalue(f"tiny_{request.param}"))


# --- yes/no scoring: one position's logits, no KV cache -------------------------------------------------------


def test_scoring_computes_the_last_position_alone_without_a_cache(tiny_qwen2: str) -> None:
    backend = _backend(tiny_qwen2)
    calls = []  # a spy: the forward hook records what each forward pass was asked for and returned

    def spy(module, args, kwargs, output) -> None:
        calls.append((kwargs, output))

    handle = backend.model.register_forward_hook(spy, with_kwargs=True)
    try:
        scores = backend.score_yes_no(MIXED_LENGTHS)
    finally:
        handle.remove()
    ((kwargs, output),) = calls
    assert kwargs["use_cache"] is False and kwargs["logits_to_keep"] == 1
    assert output.logits.shape == (len(MIXED_LENGTHS), 1, backend.model.config.vocab_size)
    assert output.past_key_values is None
    # the old computation: logits for every position and a KV cache, then the last position read
    ids = backend._yes_no_ids()
    batch = backend._encode(MIXED_LENGTHS)
    with torch.inference_mode():
        logprobs = backend.model(**batch).logits[:, -1].float().log_softmax(-1)
    expected = logprobs[:, ids["yes"]].logsumexp(-1) - logprobs[:, ids["no"]].logsumexp(-1)
    assert scores == pytest.approx(expected.tolist(), abs=1e-5)


# --- left padding: a prompt in a batch of mixed lengths gives what it gives alone -------------------------------


def test_left_padded_scores_equal_each_prompt_alone(any_backend: HFBackend) -> None:
    """Rotary models (Llama, Qwen2) see only relative positions, so padding shifted nothing but rounding before
    position ids were passed; GPT-2's learned absolute positions moved every padded row's score."""
    batched = any_backend.score_yes_no(MIXED_LENGTHS)
    alone = [any_backend.score_yes_no([p])[0] for p in MIXED_LENGTHS]
    assert batched == pytest.approx(alone, abs=1e-5)


def test_greedy_texts_and_first_logprobs_are_batch_invariant(any_backend: HFBackend) -> None:
    """What the GPU check relies on: the same greedy text for a prompt alone and in a batch of mixed lengths
    (`generate` derives position ids from the attention mask itself; GPT-2's absolute positions show it)."""
    sampling = Sampling(max_tokens=8, logprobs=5)
    requests = [Request(prompt=p, sampling=sampling) for p in MIXED_LENGTHS]
    batched = any_backend.generate(requests)
    alone = [any_backend.generate([r])[0] for r in requests]
    assert [c.texts for c in batched] == [c.texts for c in alone]
    assert all(c.texts[0] for c in batched)
    for in_batch, by_itself in zip(batched, alone, strict=True):
        (top_batch,), (top_alone,) = in_batch.logprobs, by_itself.logprobs
        assert top_batch.keys() == top_alone.keys()
        assert list(top_batch.values()) == pytest.approx(list(top_alone.values()), abs=1e-5)


# --- the model's own generation config does not decode ----------------------------------------------------------


@pytest.mark.parametrize(
    "shipped",
    [
        {"do_sample": True, "temperature": 0.3, "top_k": 1, "repetition_penalty": 5.0},
        {"num_beams": 3, "min_new_tokens": 12},
    ],
)
def test_the_models_generation_config_does_not_change_texts(tiny_lm: str, tmp_path: Path, shipped) -> None:
    plain = _backend(tiny_lm)
    model = LlamaForCausalLM.from_pretrained(tiny_lm)
    model.generation_config.update(**shipped)
    folder = _save_next_to_tokenizer(tiny_lm, tmp_path / "model", model)
    assert all(f'"{key}"' in (tmp_path / "model" / "generation_config.json").read_text() for key in shipped)
    configured = _backend(folder)
    assert configured.model.generation_config.eos_token_id == 2  # the end-of-text token is kept
    greedy = [Request(prompt=p, sampling=Sampling(max_tokens=16)) for p in MIXED_LENGTHS]
    seeded = [Request(prompt="why", n=3, sampling=Sampling(temperature=1.0, max_tokens=16, seed=3))]
    for requests in (greedy, seeded):
        assert [c.texts for c in configured.generate(requests)] == [c.texts for c in plain.generate(requests)]


# --- device and precision ---------------------------------------------------------------------------------------


class _StopLoading(Exception):
    """Raised by the from_pretrained test double once it has recorded its arguments."""


@pytest.fixture
def loads(monkeypatch) -> list[dict]:
    """A test double for from_pretrained that records its keyword arguments and stops (no GPU to load onto)."""
    recorded: list[dict] = []

    def record(path, **kwargs):
        recorded.append(kwargs)
        raise _StopLoading

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", record)
    return recorded


@pytest.fixture
def fake_gpu(monkeypatch):
    """A faked CUDA state: one GPU, bfloat16 native or not as the test sets `fake_gpu.bf16`."""

    class FakeGPU:
        bf16 = True

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: FakeGPU.bf16)
    return FakeGPU


@pytest.mark.parametrize(("bf16", "chosen"), [(True, torch.bfloat16), (False, torch.float16)])
def test_auto_dtype_on_a_gpu_takes_bfloat16_only_where_it_runs(tiny_lm, fake_gpu, loads, bf16, chosen) -> None:
    fake_gpu.bf16 = bf16
    with pytest.raises(_StopLoading):
        HFBackend(tiny_lm, device="auto")
    assert loads[0]["dtype"] == chosen and loads[0]["device_map"] == torch.device("cuda")


def test_bfloat16_asked_for_on_a_gpu_without_it_names_the_option(tiny_lm, fake_gpu, loads) -> None:
    fake_gpu.bf16 = False
    with pytest.raises(ConfigError, match=r"^hf backend: options.dtype is bfloat16, but this GPU does not support"):
        HFBackend(tiny_lm, device="cuda", dtype="bfloat16")
    assert not loads


def test_auto_on_a_cpu_loads_float32_straight_onto_it(tiny_lm, monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    real = AutoModelForCausalLM.from_pretrained
    recorded = []  # a spy around the real from_pretrained

    def spy(path, **kwargs):
        recorded.append(kwargs)
        return real(path, **kwargs)

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", spy)
    backend = HFBackend(tiny_lm)
    assert recorded[0]["device_map"] == torch.device("cpu") and recorded[0]["dtype"] == torch.float32
    assert {p.device for p in backend.model.parameters()} == {torch.device("cpu")}
    assert {p.dtype for p in backend.model.parameters()} == {torch.float32}


@pytest.mark.parametrize("device", ["banana", "", " cpu", "cuda:x", "cuda:-1", "meta", "mps", "cpu\n", "x" * 10_000, 0])
def test_a_malformed_device_is_refused_in_one_line(tiny_lm, loads, device) -> None:
    with pytest.raises(LLMError, match=r"^hf backend: options.device must be auto, cpu, cuda or cuda:N, got ") as e:
        HFBackend(tiny_lm, device=device)
    assert "\n" not in str(e.value) and len(str(e.value)) < 200 and not loads


def test_a_gpu_this_machine_lacks_is_refused(tiny_lm, monkeypatch, fake_gpu, loads) -> None:
    with pytest.raises(LLMError, match=r"^hf backend: options.device is cuda:1, but torch sees 1 GPU\(s\)$"):
        HFBackend(tiny_lm, device="cuda:1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match=r"^hf backend: options.device is cuda, but torch sees no GPU here"):
        HFBackend(tiny_lm, device="cuda")
    assert not loads


@pytest.mark.parametrize("dtype", ["float64", "bf16", "", "bfloat16 ", "int8\n", "x" * 10_000, 16, None])
def test_a_malformed_dtype_is_refused_in_one_line(tiny_lm, loads, dtype) -> None:
    refused = r"^hf backend: options.dtype must be auto, float32, bfloat16, float16, got "
    with pytest.raises(LLMError, match=refused) as e:
        HFBackend(tiny_lm, device="cpu", dtype=dtype)
    assert "\n" not in str(e.value) and len(str(e.value)) < 200 and not loads
