import json
import re
from pathlib import Path

import pytest

from synthir.beir import load_corpus, load_dataset, load_qrels, load_queries
from synthir.errors import DataError
from tests.conftest import write_beir


def test_reads_crlf_bom_and_graded_qrels(tmp_path):
    folder = write_beir(tmp_path / "d", newline="\r\n")
    corpus_file = folder / "corpus.jsonl"
    corpus_file.write_bytes(b"\xef\xbb\xbf" + corpus_file.read_bytes() + b"\r\n")  # BOM + trailing blank line
    dataset = load_dataset(folder)
    assert dataset.corpus["d1"] == {"title": "Cats", "text": "Cats purr when they are content."}
    assert dataset.corpus["d3"]["title"] == ""
    queries, qrels = dataset.split("test")
    assert qrels == {"q1": {"d1": 1}, "q2": {"d3": 2}}  # grades kept as gains, no '\r' in scores
    assert queries == {"q1": "why do cats purr", "q2": "how is honey made"}


def test_integer_ids_become_strings(tmp_path):
    path = tmp_path / "corpus.jsonl"
    path.write_text(json.dumps({"_id": 7, "text": "x"}) + "\n")
    assert list(load_corpus(path)) == ["7"]


def _corpus_lines(tmp_path: Path, *lines: str) -> Path:
    path = tmp_path / "corpus.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("bad_line", "message"),
    [
        ('{"_id": "d2", "text": "unterminated', "malformed JSON"),
        ('["not", "an", "object"]', "expected a JSON object"),
        ('{"title": "t", "text": "no id"}', "missing '_id'"),
        ('{"_id": "d2", "title": "no text"}', "missing 'text'"),
        ('{"_id": "d2", "title": "", "text": "   "}', "document 'd2' has empty text and title"),
        ('{"_id": "d1", "text": "again"}', "duplicate document id 'd1' (first on line 1)"),
        ('{"_id": "d2", "text": 3.5}', "'text' must be a string"),
    ],
)
def test_bad_corpus_lines_name_file_and_line(tmp_path, bad_line, message):
    path = _corpus_lines(tmp_path, '{"_id": "d1", "text": "fine"}', bad_line)
    with pytest.raises(DataError, match=f"^{re.escape(f'{path}:2: {message}')}"):
        load_corpus(path)


def test_empty_query_text(tmp_path):
    path = tmp_path / "queries.jsonl"
    path.write_text('{"_id": "q1", "text": "ok"}\n{"_id": "q2", "text": ""}\n')
    with pytest.raises(DataError, match=r"queries.jsonl:2: query 'q2' has empty text"):
        load_queries(path)


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ("q1\td1\tx", "score must be an integer, got 'x'"),
        ("q1\td1", "expected 3 tab-separated columns, got 2"),
        ("q1\td1\t2", r"\(q1, d1\) judged twice: 1 and 2"),
    ],
)
def test_bad_qrels_lines(tmp_path, row, message):
    path = tmp_path / "test.tsv"
    path.write_bytes(f"query-id\tcorpus-id\tscore\r\nq1\td1\t1\r\n{row}\r\n".encode())
    with pytest.raises(DataError, match=rf"test.tsv:3: {message}"):
        load_qrels(path)


@pytest.mark.parametrize(
    ("row", "message"),
    [
        (("q9", "d1", 1), "query id 'q9' is not in queries.jsonl"),
        (("q1", "d9", 1), "corpus id 'd9' is not in corpus.jsonl"),
    ],
)
def test_qrels_ids_must_exist(tmp_path, row, message):
    folder = write_beir(tmp_path / "d", qrels={"test": [("q1", "d1", 1), row]})
    with pytest.raises(DataError, match=rf"qrels/test.tsv:3: {message}"):
        load_dataset(folder)


def test_missing_split_and_files(tmp_path, beir_dir):
    with pytest.raises(DataError, match=r"no qrels/dev.tsv \(splits: test\)"):
        load_dataset(beir_dir, ["test"]).split("dev")
    with pytest.raises(DataError, match=r"corpus.jsonl: not found"):
        load_dataset(tmp_path)


def test_shared_scifact_counts(shared_beir):
    dataset = load_dataset(shared_beir / "scifact")
    assert len(dataset.corpus) == 5183 and len(dataset.queries) == 1109
    assert len(dataset.qrels["test"]) == 300 and sum(len(v) for v in dataset.qrels["test"].values()) == 339
    assert len(dataset.qrels["train"]) == 809


def test_shared_nfcorpus_graded(shared_beir):
    dataset = load_dataset(shared_beir / "nfcorpus", ["test"])
    grades = [g for judged in dataset.qrels["test"].values() for g in judged.values()]
    assert (grades.count(1), grades.count(2)) == (11758, 576)


@pytest.mark.parametrize(
    "bad_line",
    [
        r'{"_id": "d\ud800", "text": "a lone surrogate in the id"}',
        r'{"_id": "d2", "text": "a lone low half \udc00 in the text"}',
        r'{"_id": "d2", "title": "\ud83d", "text": "a high half with no partner"}',
    ],
)
def test_lone_surrogates_are_refused_with_file_and_line(tmp_path, bad_line):
    path = _corpus_lines(tmp_path, '{"_id": "d1", "text": "fine"}', bad_line)
    with pytest.raises(DataError, match=r"corpus.jsonl:2: text is not valid Unicode"):
        load_corpus(path)


def test_surrogate_pairs_are_fine(tmp_path):
    path = _corpus_lines(tmp_path, r'{"_id": "d1", "text": "an emoji \ud83d\ude00 written as a pair"}')
    assert load_corpus(path)["d1"]["text"] == "an emoji \U0001f600 written as a pair"


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"_id": "d 2", "text": "x"}', r"_id 'd 2' contains whitespace"),
        ('{"_id": "d\\t2", "text": "x"}', r"_id 'd\\t2' contains whitespace"),
    ],
)
def test_ids_with_whitespace_are_refused(tmp_path, line, message):
    path = _corpus_lines(tmp_path, '{"_id": "d1", "text": "fine"}', line)
    with pytest.raises(DataError, match=rf"corpus.jsonl:2: {message}"):
        load_corpus(path)


@pytest.mark.parametrize(
    ("row", "message"),
    [
        (b"q1\td1\t12345678901234567890123", "score 12345678901234567890123 is out of range"),
        (b"q1\td 1\t1", "corpus-id 'd 1' contains whitespace"),
        (b"q\xff1\td1\t1", "not UTF-8 text"),
    ],
)
def test_bad_qrels_bytes_and_values(tmp_path, row, message):
    path = tmp_path / "test.tsv"
    path.write_bytes(b"query-id\tcorpus-id\tscore\r\nq0\td0\t1\r\n" + row + b"\r\n")
    with pytest.raises(DataError, match=rf"test.tsv:3: {message}"):
        load_qrels(path)


def test_non_utf8_corpus_names_the_line(tmp_path):
    path = tmp_path / "corpus.jsonl"
    path.write_bytes(
        b"".join(b'{"_id": "d%d", "text": "fine"}\n' % i for i in range(3)) + b'{"_id": "d4", "text": "caf\xe9"}\n'
    )
    with pytest.raises(DataError, match=r"corpus.jsonl:4: not UTF-8 text"):
        load_corpus(path)


def test_a_folder_where_a_file_belongs_is_named(tmp_path):
    (tmp_path / "corpus.jsonl").mkdir()
    with pytest.raises(DataError, match=r"corpus.jsonl: is a folder, expected a file"):
        load_dataset(tmp_path)


def test_a_corpus_alone_is_a_dataset_without_labels(tmp_path):
    folder = write_beir(tmp_path / "d", qrels={})
    (folder / "queries.jsonl").unlink()
    dataset = load_dataset(folder)
    assert len(dataset.corpus) == 3 and dataset.queries == {} and dataset.splits == []
    with pytest.raises(DataError, match=r"no qrels/test.tsv \(splits: none\)"):
        dataset.split("test")
    (folder / "qrels" / "test.tsv").write_text("q1\td1\t1\n")
    with pytest.raises(DataError, match=r"queries.jsonl: not found"):
        load_dataset(folder)


def test_a_missing_split_is_named_before_missing_queries(tmp_path):
    folder = write_beir(tmp_path / "d", qrels={})
    (folder / "queries.jsonl").unlink()
    with pytest.raises(DataError, match=r"no qrels/test.tsv \(splits: none\)"):
        load_dataset(folder, ["test"])


@pytest.mark.parametrize(("char", "code"), [("\x00", "0000"), ("\x1b", "001B"), ("\x7f", "007F"), ("\x9b", "009B")])
def test_control_characters_in_ids_are_refused_at_load(tmp_path, char, code):
    corpus = _corpus_lines(tmp_path, '{"_id": "d1", "text": "fine"}', json.dumps({"_id": f"d{char}2", "text": "x"}))
    with pytest.raises(DataError, match=rf"corpus.jsonl:2: _id 'd.*2' contains the control character U\+{code}$"):
        load_corpus(corpus)
    queries = tmp_path / "queries.jsonl"
    queries.write_text(json.dumps({"_id": f"q{char}", "text": "x"}) + "\n")
    with pytest.raises(DataError, match=rf"queries.jsonl:1: _id .* contains the control character U\+{code}$"):
        load_queries(queries)
    qrels = tmp_path / "test.tsv"
    for row, key in ((f"q1{char}\td1\t1", "query-id"), (f"q1\td1{char}\t1", "corpus-id")):
        qrels.write_text(f"query-id\tcorpus-id\tscore\nq0\td0\t1\n{row}\n", encoding="utf-8")
        with pytest.raises(DataError, match=rf"test.tsv:3: {key} .* contains the control character U\+{code}$"):
            load_qrels(qrels)


def test_a_nul_in_an_id_never_scores(tmp_path):
    """pytrec_eval cuts ids at a NUL: 'd1\\x00x' was judged as 'd1', so a run missing d1 scored nDCG@10 1.0."""
    folder = write_beir(
        tmp_path / "d",
        corpus=[{"_id": "d1\x00x", "text": "cats purr"}, {"_id": "d1", "text": "dogs bark"}],
        queries=[{"_id": "q1", "text": "why do cats purr"}],
        qrels={"test": [("q1", "d1", 1)]},
    )
    with pytest.raises(DataError, match=r"corpus.jsonl:1: _id 'd1\\x00x' contains the control character U\+0000"):
        load_dataset(folder)


@pytest.mark.parametrize("split", ["../../outside", "../d/qrels/test", "/abs/x", "a/b", "..", "x..y", "t\x00"])
def test_a_split_name_never_leads_outside_the_dataset(tmp_path, split):
    from synthir.errors import ConfigError

    folder = write_beir(tmp_path / "d")
    (tmp_path / "outside.tsv").write_text("q1\td1\t1\n")
    with pytest.raises(ConfigError, match=r"split .*: a split is a plain name like test, dev or train"):
        load_dataset(folder, [split])


def test_a_qrels_file_that_is_not_a_split_name_is_named(tmp_path):
    folder = write_beir(tmp_path / "d")
    (folder / "qrels" / "test v2.tsv").write_text("q1\td1\t1\n")
    with pytest.raises(DataError, match=r"qrels/test v2.tsv: not a split's file \(a split is a plain name"):
        load_dataset(folder)


def test_a_long_id_is_echoed_as_an_excerpt(tmp_path):
    long_id = "d" * 100_000
    path = _corpus_lines(tmp_path, json.dumps({"_id": long_id, "text": "a"}), json.dumps({"_id": long_id, "text": "b"}))
    with pytest.raises(DataError, match=r"corpus.jsonl:2: duplicate document id 'd+… \(first on line 1\)") as error:
        load_corpus(path)
    assert len(str(error.value)) < 200
