import math

import pytest
import pytrec_eval
import torch

from synthir.config import EvaluateParams
from synthir.evaluation.evaluate import aggregate, evaluate_bm25, evaluate_dense, per_query_metrics, read_trec_run
from synthir.retrieval import faiss_top_k, ranked, top_k
from tests.conftest import write_beir

QRELS = {"q1": {"d1": 1, "d2": 2}, "q2": {"d3": 1}}
RUN = {"q1": {"d3": 0.9, "d1": 0.8, "d2": 0.7, "q1": 5.0}}  # q2 retrieved nothing; "q1" is a self-hit


def test_metrics_match_hand_computation():
    per_query = per_query_metrics(QRELS, RUN)
    dcg = 0 + 1 / math.log2(3) + 2 / math.log2(4)
    idcg = 2 + 1 / math.log2(3)
    q1 = per_query["q1"]
    assert q1["ndcg@1"] == 0.0
    assert q1["ndcg@3"] == pytest.approx(dcg / idcg)
    assert q1["recall@10"] == 1.0 and q1["p@10"] == pytest.approx(0.2)
    assert q1["mrr@10"] == 0.5
    assert q1["map@100"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert per_query["q2"] == dict.fromkeys(q1, 0.0)  # unanswered queries count as zero (trec_eval -c)
    assert aggregate(per_query)["ndcg@3"] == pytest.approx(dcg / idcg / 2)


def test_mrr_is_cut_at_ten():
    run = {"q2": {f"x{i}": 1.0 - i / 100 for i in range(10)} | {"d3": 0.5}}
    assert per_query_metrics(QRELS, run)["q2"]["mrr@10"] == 0.0
    assert per_query_metrics(QRELS, {"q2": {"d3": 0.5}})["q2"]["mrr@10"] == 1.0


def test_ties_follow_trec_eval():
    assert ranked({"a": 1.0, "b": 1.0, "c": 2.0}) == [("c", 2.0), ("b", 1.0), ("a", 1.0)]


def test_chunked_top_k_equals_full_top_k():
    generator = torch.Generator().manual_seed(0)
    queries, docs = torch.randn(7, 8, generator=generator), torch.randn(50, 8, generator=generator)
    scores, index = top_k(queries, docs, 5, doc_chunk=6, query_chunk=3)
    expected_scores, expected_index = torch.topk(queries @ docs.T, 5, dim=1)
    assert torch.equal(index, expected_index) and torch.allclose(scores, expected_scores)
    faiss_scores, faiss_index = faiss_top_k(queries, docs, 5)
    assert torch.equal(faiss_index, expected_index) and torch.allclose(faiss_scores, expected_scores, atol=1e-5)


@pytest.fixture
def self_hit_dir(tmp_path):
    """A tiny set where query 'd2' shares its id with a document (as in ArguAna)."""
    return write_beir(
        tmp_path / "d",
        queries=[{"_id": "q1", "text": "why do cats purr"}, {"_id": "d2", "text": "dogs bark at strangers"}],
        qrels={"test": [("q1", "d1", 1), ("d2", "d1", 1)]},
    )


def test_dense_evaluation_saves_a_run_pytrec_eval_agrees_with(tmp_path, tiny_encoder, self_hit_dir):
    result = evaluate_dense(tiny_encoder, self_hit_dir, EvaluateParams(batch_size=2))
    assert result.num_queries == 2 and result.num_docs == 3
    assert "d2" not in result.run["d2"] and len(result.run["q1"]) == 3
    output = tmp_path / "out" / "eval.json"
    result.save(output, tmp_path / "out" / "pq.json", tmp_path / "out" / "run.trec")
    run = read_trec_run(tmp_path / "out" / "run.trec")
    plain = pytrec_eval.RelevanceEvaluator(result_qrels(self_hit_dir), {"ndcg_cut.10", "recall.100"}).evaluate(run)
    assert result.metrics["ndcg@10"] == sum(v["ndcg_cut_10"] for v in plain.values()) / len(plain)
    assert result.metrics["recall@100"] == sum(v["recall_100"] for v in plain.values()) / len(plain)


def result_qrels(folder):
    from synthir.beir import load_qrels

    return load_qrels(folder / "qrels" / "test.tsv")


def test_bm25_ranks_the_matching_document_first(beir_dir):
    result = evaluate_bm25(beir_dir)
    assert next(iter(dict(ranked(result.run["q1"])))) == "d1"
    assert result.metrics["ndcg@10"] == 1.0 and result.summary()["num_docs"] == 3


def test_corpus_embeddings_are_memoised_per_model_and_text(tmp_path, monkeypatch, tiny_encoder):
    from sentence_transformers import SentenceTransformer

    from synthir import retrieval

    monkeypatch.setenv("SYNTHIR_CACHE_DIR", str(tmp_path))
    model = SentenceTransformer(tiny_encoder, device="cpu")
    first = retrieval.encode_passages(model, ["a passage", "another"], 2)
    monkeypatch.setattr(retrieval, "encode_corpus", lambda *a, **k: (_ for _ in ()).throw(AssertionError("re-encoded")))
    assert torch.equal(retrieval.encode_passages(model, ["a passage", "another"], 2), first)
    with torch.no_grad():
        next(model.parameters()).add_(1.0)  # other weights: another key
    with pytest.raises(AssertionError, match="re-encoded"):
        retrieval.encode_passages(model, ["a passage", "another"], 2)
    with pytest.raises(AssertionError, match="re-encoded"):
        retrieval.encode_passages(model, ["a passage", "changed"], 2, cache=True)


def test_reciprocal_rank_fusion_by_hand():
    from synthir.retrieval import reciprocal_rank_fusion

    fused = reciprocal_rank_fusion([{"q": {"a": 3.0, "b": 2.0, "c": 1.0}}, {"q": {"c": 5.0, "a": 4.0}}], depth=2)
    assert fused == {"q": {"a": pytest.approx(1 / 61 + 1 / 62), "c": pytest.approx(1 / 63 + 1 / 61)}}
    tied = reciprocal_rank_fusion([{"q": {"x": 1.0, "y": 1.0}}])  # ties ranked as trec_eval: doc id descending
    assert tied["q"] == {"y": pytest.approx(1 / 61), "x": pytest.approx(1 / 62)}


def test_fusion_evaluation_and_the_committed_per_query_record(beir_dir):
    from synthir.evaluation.evaluate import evaluate_fusion, per_query_record
    from synthir.results.runs import system_scores

    bm25 = evaluate_bm25(beir_dir)
    fused = evaluate_fusion("bm25+bm25", [bm25.run, bm25.run], beir_dir)
    assert fused.metrics == pytest.approx(bm25.metrics)  # a run fused with itself keeps its order
    record = per_query_record({"bm25": bm25, "fused": fused})
    assert record["split"] == "test" and record["metrics"] == ["ndcg@10", "recall@100"]
    assert system_scores(record, "fused", "recall@100") == {q: v["recall@100"] for q, v in bm25.per_query.items()}
    with pytest.raises(KeyError, match="no system 'dense'"):
        system_scores(record, "dense")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("q1 Q0 d1 1 0.5", r"expected 6 fields \(query Q0 doc rank score tag\), got 5"),
        ("q1 Q0 d1 1 nan bm25", "score 'nan' is not a finite number"),
        ("q1 Q0 d1 1 inf bm25", "score 'inf' is not a finite number"),
        ("q1 Q0 d1 1 high bm25", "score 'high' is not a finite number"),
        ("q1 Q0 d\x001 1 0.5 bm25", r"document id 'd\\x001' contains the control character U\+0000"),
        ("q\x1b1 Q0 d1 1 0.5 bm25", r"query id 'q\\x1b1' contains the control character U\+001B"),
        ("q0 Q0 d0 2 0.5 bm25", "document 'd0' listed twice for this query"),
        ("q1 Q0 d1 1 0.5 " + "x" * 5000, "line longer than 4,096 bytes"),
    ],
)
def test_a_malformed_trec_run_names_the_file_and_line(tmp_path, line, message):
    from synthir.errors import DataError

    path = tmp_path / "bm25.run.trec"
    path.write_text(f"q0 Q0 d0 1 0.9 bm25\n{line}\n", encoding="utf-8")
    with pytest.raises(DataError, match=rf"bm25.run.trec:2: {message}"):
        read_trec_run(path)


@pytest.mark.parametrize("split", ["../../x", "a/b", "..", "", "te st", "t" * 65])
def test_evaluate_split_in_params_is_a_plain_name(split):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="a split is a plain name like test, dev or train"):
        EvaluateParams(split=split)
    assert EvaluateParams(split="cqadupstack-android.v2").split == "cqadupstack-android.v2"


def test_an_unlabeled_split_leaves_the_evaluation_stages_outputs_skipped(tmp_path):
    """No qrels for the split: nothing is scored (no model loaded), every declared output exists, as a skip."""
    import json

    from synthir.config import load_params
    from synthir.evaluation.baseline import baseline_stage
    from synthir.evaluation.trained import evaluate_stage
    from tests.conftest import REPO

    data = str(write_beir(tmp_path / "data", qrels={"train": [("q1", "d1", 1)]}))
    params = load_params(REPO / "params.yaml")
    split = params.evaluate.split
    baseline = {
        "data": data,
        "output": tmp_path / "b.json",
        "details": tmp_path / "b",
        "per_query": tmp_path / "bq.json",
    }
    baseline_stage(params, **{name: str(path) for name, path in baseline.items()})
    evaluate_stage(
        params,
        model="no/such-model",
        aligned=None,
        data=data,
        baseline=tmp_path / "missing.json",
        bm25_run=tmp_path / "missing.trec",
        exclude=None,
        output=tmp_path / "e.json",
        details=tmp_path / "e",
        per_query=tmp_path / "eq.json",
    )
    skip = {"skipped": f"no {split} qrels: evaluation skipped", "split": split}
    empty = {"split": split, "metrics": ["ndcg@10", "recall@100"], "systems": {}}
    for output, per_query in (("b.json", "bq.json"), ("e.json", "eq.json")):
        assert json.loads((tmp_path / output).read_text()) == skip
        assert json.loads((tmp_path / per_query).read_text()) == empty
    assert (tmp_path / "b" / "bm25.run.trec").read_text() == "" and (tmp_path / "e").is_dir()


def test_the_evaluate_summary_carries_the_change_over_the_baseline(beir_dir):
    from synthir.evaluation.evaluate import METRICS, evaluate_fusion
    from synthir.evaluation.trained import evaluated_model, summary_over_baseline

    bm25 = evaluate_bm25(beir_dir)
    bm25.excluded = ["q9"]
    hybrid = evaluate_fusion("bm25+bm25", [bm25.run, bm25.run], beir_dir)
    baseline = {m: 0.25 for m in METRICS}
    summary = summary_over_baseline(bm25, hybrid, baseline)
    assert list(summary)[-4:] == ["delta", "baseline", "excluded_query_ids", "hybrid"]
    assert summary["delta"] == {m: round(summary[m] - 0.25, 6) for m in METRICS} and summary["baseline"] == baseline
    assert summary["excluded_query_ids"] == 1 and summary["hybrid"] == {m: round(bm25.metrics[m], 6) for m in METRICS}
    assert {"delta", "baseline"}.isdisjoint(summary_over_baseline(bm25, hybrid, None))  # no baseline scored
    assert evaluated_model("stage1", "aligned", True) == "aligned"
    assert evaluated_model("stage1", None, True) == evaluated_model("stage1", "aligned", False) == "stage1"
