"""LLM-layer fixtures: a tiny random Llama with a word-level tokenizer, built offline (tests/tiny_models.py)."""

from __future__ import annotations

import pytest

from tests.tiny_models import save_causal_lm


@pytest.fixture(scope="session")
def tiny_lm(tmp_path_factory) -> str:
    """A 2-layer, 32-d random Llama (sharp logits so greedy decoding has no near-ties) and its tokenizer."""
    return save_causal_lm(tmp_path_factory.mktemp("tiny-lm"), "llama")
