"""Encoders built from decoder LLMs (DRAMA's students): pruned, last-token pooled, trained in full or by LoRA."""

import json

import pytest
import torch
from safetensors.torch import load_file
from sentence_transformers import SentenceTransformer

from synthir.backbones import build_encoder
from synthir.config import TrainParams
from synthir.errors import ConfigError
from synthir.fileio import write_jsonl
from synthir.training.train import train


def test_a_decoder_becomes_a_pruned_encoder_pooled_on_an_appended_eos(tmp_path, tiny_decoder):
    model = build_encoder(tiny_decoder, "lasttoken", keep_layers=2, max_seq_length=16, device="cpu")
    word = model[0]
    assert word.model.config.num_hidden_layers == 2 and len(word.model.layers) == 2
    eos = word.tokenizer.eos_token_id
    features = model.preprocess(["a short text", "a much longer text with many more words in it " * 3])
    lengths = features["attention_mask"].sum(dim=1)
    assert [features["input_ids"][i, n - 1].item() for i, n in enumerate(lengths)] == [eos, eos]  # truncated too
    alone = model.encode(["a short text"], convert_to_tensor=True)
    padded = model.encode(["a short text", "a much longer text " * 5], convert_to_tensor=True)[:1]
    torch.testing.assert_close(alone, padded, atol=1e-5, rtol=0)  # the last real token, wherever padding is
    model.save(str(tmp_path / "saved"))
    again = SentenceTransformer(str(tmp_path / "saved"), device="cpu")
    assert again[0].model.config.num_hidden_layers == 2
    torch.testing.assert_close(again.encode(["a short text"], convert_to_tensor=True), alone, atol=1e-6, rtol=0)


def test_pruning_past_the_model_is_refused(tiny_decoder):
    with pytest.raises(ConfigError, match=r"train\.keep_layers: 9 is not between 1 and the model's 4 layers"):
        build_encoder(tiny_decoder, "lasttoken", keep_layers=9, max_seq_length=16, device="cpu")


def test_a_lora_student_trains_and_saves_as_a_plain_sentence_transformer(tmp_path, tiny_decoder):
    rows = [
        {"query_id": f"q{i}", "query": f"question {i}", "positives": [f"answer {i} here"], "negatives": [f"noise {i}"]}
        for i in range(8)
    ]
    write_jsonl(tmp_path / "train.jsonl", rows)
    params = TrainParams(
        base_model=tiny_decoder, pooling="lasttoken", keep_layers=2, lora_rank=4, batch_size=4, lr=1e-2, epochs=2
    )
    summary = train(params, tmp_path / "train.jsonl", tmp_path / "model", tmp_path / "live", tmp_path / "ckpt")
    assert summary["steps"] == 4
    files = {p.name for p in (tmp_path / "model").rglob("*")}
    assert "adapter_config.json" not in files  # the adapters were merged into the weights
    model = SentenceTransformer(str(tmp_path / "model"), device="cpu")
    assert type(model[0].model).__name__ == "Qwen2Model" and model[0].model.config.num_hidden_layers == 2
    trained = load_file(next((tmp_path / "model").rglob("model.safetensors")))
    base = load_file(f"{tiny_decoder}/model.safetensors")
    attention = [n for n in trained if "self_attn.q_proj.weight" in n]
    assert attention and all(not torch.equal(trained[n], base[n.split("model.", 1)[-1]]) for n in attention)
    embeddings = [n for n in trained if "embed_tokens" in n]
    assert all(torch.equal(trained[n], base[n.split("model.", 1)[-1]]) for n in embeddings)  # LoRA: frozen
    assert json.loads((tmp_path / "model" / "config_sentence_transformers.json").read_text())["prompts"] == {}


def test_attention_dropout_is_set_on_every_attention_and_nowhere_else(tiny_encoder, tiny_decoder):
    from synthir.backbones import set_attention_dropout
    from synthir.retrieval import load_encoder

    model = load_encoder(tiny_encoder)
    assert set_attention_dropout(model, 0.0) == 2  # the two BERT layers' self-attention
    bert = model[0].auto_model
    assert [layer.attention.self.dropout.p for layer in bert.encoder.layer] == [0.0, 0.0]
    assert [layer.output.dropout.p for layer in bert.encoder.layer] == [0.1, 0.1]  # hidden-state dropout kept
    assert bert.config.attention_probs_dropout_prob == 0.0
    model.train()
    features = model.tokenize(["cats purr when content"] * 2)
    torch.manual_seed(0)
    first = model(dict(features))["sentence_embedding"]
    for layer in bert.encoder.layer:
        layer.output.dropout.p = layer.attention.output.dropout.p = 0.0
    bert.embeddings.dropout.p = 0.0
    assert torch.equal(model(dict(features))["sentence_embedding"], model(dict(features))["sentence_embedding"])
    assert not torch.equal(first, model(dict(features))["sentence_embedding"])  # hidden dropout was still on
    decoder = build_encoder(tiny_decoder, "lasttoken", 0, None, "cpu")
    assert set_attention_dropout(decoder, 0.0) >= 1
