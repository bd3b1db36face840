"""The transformers backend on a tiny random Llama (built offline in conftest)."""

from __future__ import annotations

import pytest
import torch

from synthir.llm import Request, Sampling, make_backend
from synthir.llm.hf import HFBackend

GREEDY = Sampling(max_tokens=6)
PROMPTS = ["the cat sat on the mat", "why", "what does a big red bird do"]
CHAT = [{"role": "user", "content": "is the dog big"}]


@pytest.fixture(scope="module")
def backend(tiny_lm: str) -> HFBackend:
    torch.set_num_threads(1)
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
