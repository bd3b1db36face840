"""BEIR-format data: corpus.jsonl, queries.jsonl, qrels/<split>.tsv.

Readers tolerate a UTF-8 BOM, CRLF line ends and blank lines; everything else that is wrong raises a
DataError naming the file and line. Relevance grades are kept as integer gains. A folder may hold only
corpus.jsonl (a corpus without labels): queries and qrels are then absent.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError, DataError, at, excerpt, shorten
from .fileio import decode_line, json_lines, require_file

Corpus = dict[str, dict[str, str]]  # doc id -> {"title": ..., "text": ...}
Queries = dict[str, str]  # query id -> text
Qrels = dict[str, dict[str, int]]  # query id -> doc id -> gain


GAIN_LIMIT = 2**31 - 1
"""Relevance grades beyond a C int overflow trec_eval."""
_SPACE = re.compile(r"\s")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def check_id(value: str, key: str, path: Path, lineno: int) -> None:
    """An id that survives a TREC run file and trec_eval, which cut at a NUL: no whitespace, no control
    character."""
    if not value.strip():
        raise DataError(f"{at(path, lineno)}: empty '{key}'")
    if _SPACE.search(value):
        raise DataError(
            f"{at(path, lineno)}: {key} {excerpt(value)} contains whitespace (TREC run files cannot hold it)"
        )
    if control := _CONTROL.search(value):
        raise DataError(
            f"{at(path, lineno)}: {key} {excerpt(value)} contains the control character U+{ord(control.group()):04X}"
        )


_SPLIT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def check_split_name(value: str) -> str:
    """`value` if it is a plain split name (test, dev, train): it names the file qrels/<split>.tsv, so no
    separator, no `..`, nothing that could lead outside the dataset folder."""
    if not _SPLIT_NAME.fullmatch(value) or ".." in value:
        raise ValueError(
            "a split is a plain name like test, dev or train: letters, digits and _.- (at most 64, no '..')"
        )
    return value


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
        check_id(doc_id, "_id", path, lineno)
        if doc_id in seen:
            raise DataError(f"{at(path, lineno)}: duplicate {kind} id {excerpt(doc_id)} (first on line {seen[doc_id]})")
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
            raise DataError(f"{at(path, lineno)}: document {excerpt(doc_id)} has empty text and title")
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
            raise DataError(f"{at(path, lineno)}: query {excerpt(query_id)} has empty text")
        queries[query_id] = text
    if not queries:
        raise DataError(f"{path}: no queries")
    return queries


def _qrels_rows(path: Path) -> Iterator[tuple[int, list[str]]]:
    """(line number, tab-separated cells) of each non-blank line, the header skipped."""
    with open(require_file(path), "rb") as handle:
        for lineno, raw in enumerate(handle, start=1):
            line = decode_line(raw, path, lineno).rstrip("\r\n")
            if not line.strip():
                continue
            row = [cell.strip() for cell in line.split("\t")]
            if lineno == 1 and row[:2] == ["query-id", "corpus-id"]:
                continue
            yield lineno, row


def load_qrels(path: str | Path) -> Qrels:
    """Tab-separated `query-id, corpus-id, score` with an optional header line."""
    path = Path(path)
    qrels: Qrels = {}
    for lineno, row in _qrels_rows(path):
        if len(row) != 3:
            raise DataError(f"{at(path, lineno)}: expected 3 tab-separated columns, got {len(row)}")
        query_id, doc_id, score = row
        try:
            gain = int(score)
        except ValueError:
            raise DataError(f"{at(path, lineno)}: score must be an integer, got {excerpt(score)}") from None
        if abs(gain) > GAIN_LIMIT:
            raise DataError(
                f"{at(path, lineno)}: score {shorten(score)} is out of range (at most {GAIN_LIMIT} in magnitude)"
            )
        check_id(query_id, "query-id", path, lineno)
        check_id(doc_id, "corpus-id", path, lineno)
        previous = qrels.setdefault(query_id, {}).get(doc_id)
        if previous is not None and previous != gain:
            raise DataError(
                f"{at(path, lineno)}: ({shorten(query_id)}, {shorten(doc_id)}) judged twice: {previous} and {gain}"
            )
        qrels[query_id][doc_id] = gain
    if not qrels:
        raise DataError(f"{path}: no judgements")
    return qrels


def check_qrels_ids(path: Path, qrels: Qrels, corpus: Corpus, queries: Queries) -> None:
    """Every judged query and document must exist; the error names the qrels line."""
    if all(q in queries and all(d in corpus for d in judged) for q, judged in qrels.items()):
        return
    for lineno, (query_id, doc_id, _) in _qrels_rows(path):
        if query_id not in queries:
            raise DataError(f"{at(path, lineno)}: query id {excerpt(query_id)} is not in queries.jsonl")
        if doc_id not in corpus:
            raise DataError(f"{at(path, lineno)}: corpus id {excerpt(doc_id)} is not in corpus.jsonl")


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
            raise DataError(f"{self.folder}: no qrels/{shorten(name)}.tsv (splits: {', '.join(self.splits) or 'none'})")
        qrels = self.qrels[name]
        return {q: self.queries[q] for q in qrels}, qrels


def split_names(folder: str | Path) -> list[str]:
    """The splits a folder has qrels for; a qrels file whose name is not a plain split name is an error."""
    names = []
    for path in sorted((Path(folder) / "qrels").glob("*.tsv")):
        try:
            names.append(check_split_name(path.stem))
        except ValueError as error:
            raise DataError(f"{path}: not a split's file ({error}); rename it") from None
    return names


def qrels_path(folder: str | Path, split: str) -> Path:
    """`folder`/qrels/<split>.tsv; a split that is not a plain name (`../x`, `a/b`) is refused, so that no split
    leads outside the dataset folder."""
    try:
        check_split_name(split)
    except ValueError as error:
        raise ConfigError(f"split {excerpt(split)}: {error}") from None
    return Path(folder) / "qrels" / f"{split}.tsv"


def has_split(folder: str | Path, split: str) -> bool:
    return qrels_path(folder, split).is_file()


def load_dataset(folder: str | Path, splits: list[str] | None = None) -> Dataset:
    """Load and validate a BEIR folder (all splits unless named). Only corpus.jsonl is required; queries.jsonl
    is required where there are qrels to check."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: not a folder")
    corpus = load_corpus(folder / "corpus.jsonl")
    names = split_names(folder) if splits is None else splits
    for name in names:
        if not has_split(folder, name):
            have = ", ".join(split_names(folder)) or "none"
            raise DataError(f"{folder}: no {qrels_path('', name)} (splits: {have})")
    queries_path = folder / "queries.jsonl"
    if not queries_path.exists() and not names:
        return Dataset(folder, corpus, {}, {})
    queries = load_queries(queries_path)
    qrels = {}
    for name in names:
        path = qrels_path(folder, name)
        qrels[name] = load_qrels(path)
        check_qrels_ids(path, qrels[name], corpus, queries)
    return Dataset(folder, corpus, queries, qrels)


def passage_text(doc: dict[str, str], sep: str = " ") -> str:
    """Title and text joined the way BEIR's dense models read them."""
    return (doc.get("title", "") + sep + doc["text"]).strip()
