"""The evaluator against published numbers on the real SciFact files (one full dense evaluation, ~4 min)."""

import pytest
import pytrec_eval

from synthir.beir import load_qrels
from synthir.config import EvaluateParams
from synthir.evaluation.evaluate import evaluate_bm25, evaluate_dense, read_trec_run
from tests.conftest import MINILM

pytestmark = pytest.mark.integration


def test_minilm_reproduces_mteb_and_pytrec_eval_agrees(shared_beir, tmp_path):
    scifact = shared_beir / "scifact"
    result = evaluate_dense(MINILM, scifact, EvaluateParams(batch_size=32))
    assert result.num_queries == 300 and result.num_docs == 5183
    assert result.metrics["ndcg@10"] == pytest.approx(0.64508, abs=0.003)  # MTEB: 0.64508

    result.save(tmp_path / "eval.json", run=tmp_path / "run.trec")
    qrels = load_qrels(scifact / "qrels" / "test.tsv")
    measures = {"ndcg_cut.1,3,5,10", "recall.10,100", "P.10", "map_cut.100"}
    plain = pytrec_eval.RelevanceEvaluator(qrels, measures).evaluate(read_trec_run(tmp_path / "run.trec"))
    assert len(plain) == 300
    for ours, theirs in [
        ("ndcg@10", "ndcg_cut_10"),
        ("recall@100", "recall_100"),
        ("p@10", "P_10"),
        ("ndcg@1", "ndcg_cut_1"),
        ("map@100", "map_cut_100"),
    ]:
        assert result.metrics[ours] == sum(q[theirs] for q in plain.values()) / 300, ours


def test_bm25_lands_in_the_published_range(shared_beir):
    result = evaluate_bm25(shared_beir / "scifact")
    assert 0.665 <= result.metrics["ndcg@10"] <= 0.690
