"""Cropped-sentence pseudo-queries: a sentence of the document, cut out of its positive, seeded."""

import random

from synthir.config import TriplesParams
from synthir.data.cropping import crop_query, cropped_examples, sentences
from synthir.fileio import read_jsonl
from synthir.triples.build import build
from tests.conftest import write_beir

TEXT = "Cats purr when content. Purring is produced in the larynx of the cat. It also helps healing (e.g. bones)."


def test_sentences_split_at_full_stops_before_capitals():
    assert sentences(TEXT) == [
        "Cats purr when content.",
        "Purring is produced in the larynx of the cat.",
        "It also helps healing (e.g. bones).",
    ]
    assert sentences("p < 0.05 was significant. 12 cells died.") == ["p < 0.05 was significant.", "12 cells died."]


def test_a_crop_is_a_long_enough_sentence_removed_from_the_text():
    query, rest = crop_query(TEXT, random.Random(0), min_words=7, max_words=5)
    assert query == "Purring is produced in the"  # the only sentence of 7+ words, cut to 5
    assert rest == "Cats purr when content. It also helps healing (e.g. bones)."
    assert crop_query("One sentence only, long enough here.", random.Random(0), 2, 9) is None
    assert crop_query(TEXT, random.Random(0), 20, 30) is None


def test_examples_are_seeded_distinct_and_keep_the_title():
    corpus = {"d1": {"title": "Cats", "text": TEXT}, "d2": {"title": "", "text": "Too short."}}
    examples = cropped_examples(corpus, ["d1", "d2"], 3, 3, 32, True, seed=5)
    assert examples == cropped_examples(corpus, ["d1", "d2"], 3, 3, 32, True, seed=5)
    assert [e["query_id"] for e in examples] == ["d1-c0", "d1-c1", "d1-c2"]
    assert len({e["query"] for e in examples}) == 3
    for e in examples:
        assert e["positives"][0].startswith("Cats ") and e["query"] not in e["positives"][0]
        assert e["positive_ids"] == ["d1"] and e["source"] == "cropped"
    whole = cropped_examples(corpus, ["d1"], 1, 3, 32, False, seed=5)
    assert whole[0]["positives"] == ["Cats " + TEXT]


def test_triples_crop_the_sampled_documents_and_mine_their_negatives(tmp_path):
    text = "Topic{i} is studied here at length. Cells of kind{i} grow."
    corpus = [{"_id": f"d{i}", "title": "", "text": text.format(i=i)} for i in range(20)]
    folder = write_beir(tmp_path / "data", corpus, [{"_id": "q", "text": "x"}], {"test": [("q", "d0", 1)]})
    params = TriplesParams.model_validate(
        {"sources": ["cropped"], "negatives": {"method": "bm25", "rank_from": 0}, "cropped": {"min_words": 4}}
    )
    summary = build(params, folder, tmp_path / "none", tmp_path / "t.jsonl", tmp_path / "m.json", ["d3", "d5"])
    examples = list(read_jsonl(tmp_path / "t.jsonl"))
    assert summary["by_source"] == {"cropped": 2} and summary["with_negatives"] == 2
    assert {e["positive_ids"][0] for e in examples} == {"d3", "d5"}
    assert all(e["negative_ids"][0] != e["positive_ids"][0] for e in examples)
