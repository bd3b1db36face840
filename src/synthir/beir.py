"""BEIR-format data: corpus.jsonl, queries.jsonl, qrels/<split>.tsv.

Readers tolerate a UTF-8 BOM, CRLF line ends and blank lines; everything else that is wrong raises a
DataError naming the file and line. Relevance grades are kept as integer gains.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .errors import DataError, at
from .fileio import json_lines

Corpus = dict[str, dict[str, str]]  # doc id -> {"title": ..., "text": ...}
Queries = dict[str, str]  # query id -> text
Qrels = dict[str, dict[str, int]]  # query id -> doc id -> gain


def _require_file(path: Path) -> None:
    if not path.is_file():
        raise DataError(f"{path}: not found")


def _field(record: dict, key: str, path: Path, lineno: int, required: bool = True) -> str:
    if key not in record or record[key] is None:
        if required:
            raise DataError(f"{at(path, lineno)}: missing '{key}'")
        return ""
    value = record[key]
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise DataError(f"{at(path, lineno)}: '{key}' must be a string, got {type(value).__name__}")
    return str(value)


def _read_records(path: Path, kind: str) -> Iterator[tuple[int, str, dict]]:
    seen: dict[str, int] = {}
    for lineno, record in json_lines(path):
        doc_id = _field(record, "_id", path, lineno)
        if not doc_id.strip():
            raise DataError(f"{at(path, lineno)}: empty '_id'")
        if doc_id in seen:
            raise DataError(f"{at(path, lineno)}: duplicate {kind} id '{doc_id}' (first on line {seen[doc_id]})")
        seen[doc_id] = lineno
        yield lineno, doc_id, record


def load_corpus(path: str | Path) -> Corpus:
    """Documents need an `_id` and a `text`; a document whose title and text are both empty is an error
    (some BEIR corpora, e.g. SCIDOCS, have title-only documents)."""
    path = Path(path)
    corpus: Corpus = {}
    for lineno, doc_id, record in _read_records(path, "document"):
        text = _field(record, "text", path, lineno)
        title = _field(record, "title", path, lineno, required=False)
        if not text.strip() and not title.strip():
            raise DataError(f"{at(path, lineno)}: document '{doc_id}' has empty text and title")
        corpus[doc_id] = {"title": title, "text": text}
    if not corpus:
        raise DataError(f"{path}: no documents")
    return corpus


def load_queries(path: str | Path) -> Queries:
    path = Path(path)
    queries: Queries = {}
    for lineno, query_id, record in _read_records(path, "query"):
        text = _field(record, "text", path, lineno)
        if not text.strip():
            raise DataError(f"{at(path, lineno)}: query '{query_id}' has empty text")
        queries[query_id] = text
    if not queries:
        raise DataError(f"{path}: no queries")
    return queries


def load_qrels(path: str | Path) -> Qrels:
    """Tab-separated `query-id, corpus-id, score` with an optional header line."""
    path = Path(path)
    qrels: Qrels = {}
    _require_file(path)
    with open(path, encoding="utf-8-sig", newline="") as handle:
        for lineno, row in enumerate(csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE), start=1):
            if not row or all(not cell.strip() for cell in row):
                continue
            if len(row) != 3:
                raise DataError(f"{at(path, lineno)}: expected 3 tab-separated columns, got {len(row)}")
            query_id, doc_id, score = (cell.strip() for cell in row)
            if lineno == 1 and (query_id, doc_id) == ("query-id", "corpus-id"):
                continue
            try:
                gain = int(score)
            except ValueError:
                raise DataError(f"{at(path, lineno)}: score must be an integer, got {score!r}") from None
            if not query_id or not doc_id:
                raise DataError(f"{at(path, lineno)}: empty query or corpus id")
            previous = qrels.setdefault(query_id, {}).get(doc_id)
            if previous is not None and previous != gain:
                raise DataError(f"{at(path, lineno)}: ({query_id}, {doc_id}) judged twice: {previous} and {gain}")
            qrels[query_id][doc_id] = gain
    if not qrels:
        raise DataError(f"{path}: no judgements")
    return qrels


def check_qrels_ids(path: Path, qrels: Qrels, corpus: Corpus, queries: Queries) -> None:
    """Every judged query and document must exist; the error names the qrels line."""
    missing_q = {q for q in qrels if q not in queries}
    missing_d = {d for judged in qrels.values() for d in judged if d not in corpus}
    if not missing_q and not missing_d:
        return
    with open(path, encoding="utf-8-sig", newline="") as handle:
        for lineno, row in enumerate(csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE), start=1):
            if len(row) != 3:
                continue
            query_id, doc_id = row[0].strip(), row[1].strip()
            if query_id in missing_q:
                raise DataError(f"{at(path, lineno)}: query id '{query_id}' is not in queries.jsonl")
            if doc_id in missing_d:
                raise DataError(f"{at(path, lineno)}: corpus id '{doc_id}' is not in corpus.jsonl")


@dataclass
class Dataset:
    """A BEIR folder, loaded and cross-checked."""

    folder: Path
    corpus: Corpus
    queries: Queries
    qrels: dict[str, Qrels]  # split -> judgements

    @property
    def splits(self) -> list[str]:
        return sorted(self.qrels)

    def split(self, name: str) -> tuple[Queries, Qrels]:
        """The queries judged in a split, and its qrels."""
        if name not in self.qrels:
            raise DataError(f"{self.folder}: no qrels/{name}.tsv (splits: {', '.join(self.splits) or 'none'})")
        qrels = self.qrels[name]
        return {q: self.queries[q] for q in qrels}, qrels


def split_names(folder: str | Path) -> list[str]:
    return sorted(p.stem for p in (Path(folder) / "qrels").glob("*.tsv"))


def load_dataset(folder: str | Path, splits: list[str] | None = None) -> Dataset:
    """Load and validate a BEIR folder (all splits unless named)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: not a folder")
    corpus = load_corpus(folder / "corpus.jsonl")
    queries = load_queries(folder / "queries.jsonl")
    names = split_names(folder) if splits is None else splits
    if not names:
        raise DataError(f"{folder}: no qrels/*.tsv")
    qrels = {}
    for name in names:
        path = folder / "qrels" / f"{name}.tsv"
        qrels[name] = load_qrels(path)
        check_qrels_ids(path, qrels[name], corpus, queries)
    return Dataset(folder, corpus, queries, qrels)


def passage_text(doc: dict[str, str], sep: str = " ") -> str:
    """Title and text joined the way BEIR's dense models read them."""
    return (doc.get("title", "") + sep + doc["text"]).strip()
