"""Teacher scores: fused ranks by hand, the judge's P(yes), and Margin-MSE training from them."""

import math

import numpy as np
import pytest

from synthir.errors import ConfigError
from synthir.triples.teacher import fused_score, hybrid_scores, llm_scores, ranks_of


def test_ranks_and_fused_scores_by_hand():
    assert ranks_of(np.array([0.1, 0.9, 0.5, 0.9]), [0, 1, 2, 3]) == [4, 1, 3, 1]  # ties share the best rank
    assert fused_score(1, 1) == pytest.approx(1.0)
    assert fused_score(1, 11) == pytest.approx(61 / 2 * (1 / 61 + 1 / 71))


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
