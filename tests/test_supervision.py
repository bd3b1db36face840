"""DRAGON-style supervision (synthir.triples.supervision): relabeling, disagreement and top-k negatives, fused
teacher scores by hand, on a toy corpus ranked by test doubles of BM25 and the dense retriever."""

import json

import numpy as np
import pytest
import yaml

from synthir.config import TriplesParams, parse_params
from synthir.errors import ConfigError
from synthir.fileio import read_jsonl
from synthir.models import check_reference
from synthir.triples.build import build
from synthir.triples.supervision import FusedRule, corpus_ranks, normalised_fusion, supervise
from tests.conftest import REPO, write_beir

DOCS = "abcdefgh"
CORPUS = {d: {"title": "", "text": f"passage {d}"} for d in DOCS}
# (BM25 rank, dense rank) of each document; fused order: a c d b e f g h
RANKS = {"a": (1, 1), "b": (2, 6), "c": (3, 2), "d": (4, 3), "e": (5, 4), "f": (6, 5), "g": (7, 7), "h": (8, 8)}


def rows_double(ranks: dict[str, int]):
    """A test double for a retriever: the same score row for every query, from each document's rank."""
    row = np.array([10.0 - ranks[d] for d in DOCS])
    return lambda queries: np.tile(row, (len(queries), 1))


def teachers_double(ranks: dict[str, tuple[int, ...]]) -> dict:
    """Test doubles for BM25 and the dense retriever (and a student when the ranks have a third column)."""
    names = ["bm25_double", "dense_double", "student_double"]
    return {names[t]: rows_double({d: r[t] for d, r in ranks.items()}) for t in range(len(next(iter(ranks.values()))))}


def example(positive: str, source: str = "doc2query", **extra) -> dict:
    return {
        "query_id": f"q-{positive}",
        "query": "q",
        "positive_ids": [positive],
        "positives": [f"passage {positive}"],
        "negatives": [],
        "negative_ids": [],
        "source": source,
        **extra,
    }


def run(examples, ranks=RANKS, seed=13, **rule):
    settings = {"num_negatives": 2, "rank_from": 1, "rank_to": 8, "strategy": "top", "depth": 3} | rule
    return supervise(examples, teachers_double(ranks), CORPUS, {}, FusedRule(**settings), seed)


def test_corpus_ranks_and_the_fusion_by_hand():
    row = np.array([0.1, 0.9, 0.5, 0.9])
    assert corpus_ranks(row).tolist() == [4, 1, 3, 1]  # ties share the best rank
    assert normalised_fusion(np.array([[1, 4], [11, 2]])).tolist() == pytest.approx(
        [61 / 2 * (1 / 61 + 1 / 71), 61 / 2 * (1 / 64 + 1 / 62)]
    )
    assert normalised_fusion(np.array([[1], [2], [4]]))[0] == pytest.approx(0.978999, abs=1e-6)  # 61/3 Σ 1/(60+r)


def test_the_positive_is_kept_when_the_teachers_agree_on_it():
    kept = example("a")
    summary = run([kept])
    assert kept["positive_ids"] == ["a"] and "relabeled_from" not in kept
    assert summary["relabeled"] == {} and summary["teachers"] == ["bm25_double", "dense_double"]


def test_the_positive_is_relabeled_when_every_teacher_puts_another_document_first():
    relabeled, judged, train, off = example("c"), example("c"), example("c", "train"), example("c")
    judged["not_negative_ids"] = ["b"]  # Gecko's judge chose c over the query's own document b: kept
    summary = run([relabeled, judged, train])
    assert relabeled["positive_ids"] == ["a"] and relabeled["positives"] == ["passage a"]
    assert relabeled["relabeled_from"] == "c" and "c" not in relabeled["negative_ids"]
    assert judged["positive_ids"] == ["c"] and train["positive_ids"] == ["c"]  # labeled positives left alone
    assert summary["relabeled"] == {"doc2query": 1}
    run([off], relabel_sources=())
    assert off["positive_ids"] == ["c"]
    split = {**RANKS, "a": (1, 3), "c": (3, 1), "d": (4, 2)}  # only BM25 ranks a above c: kept
    disputed = example("c")
    run([disputed], ranks=split)
    assert disputed["positive_ids"] == ["c"]
    already_negative = example("c", negative_ids=["a"], negatives=["passage a"])  # e.g. the judge's worst
    run([already_negative])
    assert already_negative["positive_ids"] == ["c"]


def test_negatives_come_only_from_ranks_where_the_teachers_disagree():
    top = example("a")
    run([top], num_negatives=5)  # within top 3 of one teacher, not the other's: b (2, 6) and d (4, 3)
    assert top["negative_ids"] == ["d", "b"]  # in fused order
    lower = example("c", "train")  # a (both) and b (BM25) rank above the positive c: never its negatives
    run([lower], num_negatives=5)
    assert lower["negative_ids"] == ["d"]
    window = example("a")
    run([window], num_negatives=5, rank_from=3)  # d is fused position 2, outside [3, 8)
    assert window["negative_ids"] == ["b"]


def test_teacher_scores_are_the_fused_scores_computed_by_hand():
    top = example("a")
    run([top], num_negatives=5)
    # a: 61/2 (1/61 + 1/61) = 1; d: 61/2 (1/64 + 1/63); b: 61/2 (1/62 + 1/66)
    assert top["teacher"] == {"method": "fused", "positive": 1.0, "negatives": [0.960689, 0.954057]}
    assert top["negative_scores"] == [0.9607, 0.9541]
    three = example("a")
    run([three], ranks={d: (*r, r[0]) for d, r in RANKS.items()}, num_negatives=1, candidates="top_k", top_k=1)
    assert three["negative_ids"] == ["c"] and three["teacher"]["negatives"] == [0.97346]  # 61/3 (2/63 + 1/62)
    cut = example("a", positives=["passage a, a sentence cut out"])
    generated = example("a", negative_ids=["generated"], negatives=["a generated miss"])
    summary = run([cut, generated])
    assert "teacher" not in cut and "teacher" not in generated and summary["without_teacher_scores"] == 2


def test_top_k_candidates_are_the_fused_head_then_a_deeper_sample():
    chosen = example("a")
    run([chosen], candidates="top_k", top_k=2, num_negatives=4, rank_from=3, strategy="random")
    head, *deeper = chosen["negative_ids"]
    assert head == "c"  # the fused top 2 is a (the positive) and c
    assert len(deeper) == 3 and set(deeper) <= set("befgh")  # fused positions [3, 8); d (position 2) never
    assert deeper == sorted(deeper, key="acdbefgh".index)


def test_sampling_is_reproducible_by_seed():
    def negatives(seed: int) -> list[list[str]]:
        examples = [example("a") for _ in range(4)]
        run(examples, seed=seed, candidates="top_k", top_k=0, num_negatives=2, strategy="random")
        return [e["negative_ids"] for e in examples]

    assert negatives(1) == negatives(1)
    assert any(negatives(seed) != negatives(1) for seed in range(2, 6))


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({"depth": float("nan")}, "triples.negatives.fused.depth: Input should be a valid integer"),
        ({"depth": float("inf")}, "triples.negatives.fused.depth: Input should be a valid integer"),
        ({"depth": 0}, "triples.negatives.fused.depth: Input should be greater than 0"),
        ({"top_k": -1}, "triples.negatives.fused.top_k: Input should be greater than or equal to 0"),
        ({"top_k": "2"}, "triples.negatives.fused.top_k: Input should be a valid integer"),
        ({"top_k": True}, "triples.negatives.fused.top_k: Input should be a valid integer"),
        ({"candidates": "all"}, "triples.negatives.fused.candidates: Input should be 'disagreement' or 'top_k'"),
        ({"relabel_sources": ["syntriever"]}, "triples.negatives.fused.relabel_sources.0: Input should be"),
        ({"relabel_sources": "cropped"}, "triples.negatives.fused.relabel_sources: Input should be a valid list"),
        ({"student": ""}, "triples.negatives.fused.student: String should have at least 1 character"),
        ({"student": "./no/such/dir"}, "triples.negatives.fused.student: .*no such file or folder"),
        ({"teachers": 3}, "triples.negatives.fused.teachers: unknown key"),
        ({"candidates": "top_k", "top_k": 2}, r"triples.negatives: fused.top_k \(2\) exceeds num_negatives \(1\)"),
        ({"margin": 0.1}, "triples.negatives: margin and max_score guard one scorer's scores"),
    ],
)
def test_hostile_fused_params_are_refused_by_key(edit, message):
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    negatives = params["triples"]["negatives"]
    negatives["method"] = "fused"
    if "margin" in edit:
        negatives.update(edit)
    else:
        negatives["fused"] = edit
    with pytest.raises(ConfigError, match=message):
        parse_params(params, check_model=check_reference)


def test_the_defaults_keep_todays_negatives():
    negatives = TriplesParams().negatives
    assert negatives.method == "bm25" and negatives.fused.relabel_sources == ["doc2query", "cropped"]
    assert TriplesParams.model_validate({"negatives": {"method": "bm25", "margin": 0.1}}).negatives.margin == 0.1


@pytest.fixture
def data(tmp_path):
    text = "Cats purr about topic{0} today. More words {0} follow here."
    corpus = [{"_id": f"d{i}", "title": f"T{i}", "text": text.format(i)} for i in range(20)]
    queries = [{"_id": f"q{i}", "text": f"cats purr topic{i}"} for i in range(3)]
    folder = write_beir(tmp_path / "data", corpus, queries, {"train": [(f"q{i}", f"d{i}", 1) for i in range(3)]})
    verified = tmp_path / "verified"
    verified.mkdir()
    (verified / "doc2query.jsonl").write_text(json.dumps({"id": "d7-q0", "doc_id": "d7", "query": "topic7 purr"}))
    (verified / "query_negative.jsonl").write_text("")
    return folder, verified


def test_the_triples_stage_runs_with_fused_supervision_and_margin_mse_trains_on_it(tmp_path, data, tiny_encoder):
    from synthir.config import TrainParams
    from synthir.training.train import train

    folder, verified = data
    negatives = {
        "method": "fused",
        "model": tiny_encoder,
        "num_negatives": 2,
        "rank_from": 1,
        "rank_to": 20,
        "fused": {"depth": 5, "candidates": "top_k", "top_k": 1, "student": tiny_encoder},
    }
    cropped = {"min_words": 3, "remove_from_positive": False}  # whole documents: the teachers ranked them
    params = TriplesParams.model_validate(
        {"sources": ["train", "doc2query", "cropped"], "negatives": negatives, "cropped": cropped}
    )
    output, metrics = tmp_path / "train.jsonl", tmp_path / "triples.json"
    summary = build(params, folder, verified, output, metrics, sample_ids=["d3", "d4"])
    examples = list(read_jsonl(output))
    assert summary["by_source"] == {"train": 3, "doc2query": 1, "cropped": 2}
    assert summary["supervision"]["teachers"] == ["bm25", "dense", "student"]
    assert json.loads(metrics.read_text())["supervision"] == summary["supervision"]
    assert summary["with_teacher_scores"] == len(examples) == 6
    for e in examples:
        assert e["negative_method"] == "fused" and len(e["negative_ids"]) == len(e["teacher"]["negatives"]) == 2
        assert not set(e["negative_ids"]) & {*e["positive_ids"], e.get("relabeled_from")}
        assert all(0 < s <= 1 for s in [e["teacher"]["positive"], *e["teacher"]["negatives"]])
    again = tmp_path / "again.jsonl"
    build(params, folder, verified, again, tmp_path / "again.json", sample_ids=["d3", "d4"])
    assert list(read_jsonl(again)) == examples  # seeded
    trained = train(
        TrainParams(base_model=tiny_encoder, loss="marginmse", batch_size=2, num_negatives=2),
        output,
        tmp_path / "model",
        tmp_path / "live",
        tmp_path / "ckpt",
    )
    assert trained["steps"] == 3 and trained["final_loss"] >= 0
