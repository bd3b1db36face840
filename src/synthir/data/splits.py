"""A dev split carved from the labeled train queries, so that every choice is made without the test split.

BEIR's SciFact has train and test qrels only. `carve_dev` moves a seeded share of the train *queries* (all of a
query's judgements together) into `qrels/dev.tsv` and leaves the rest in `qrels/train.tsv`, copying the
original lines unchanged. Downstream stages then see an ordinary BEIR folder: training, few-shot examples and
Syntriever sets read `train`, and `evaluate.split: dev` scores the held-out queries. A dataset that ships its
own dev qrels (NFCorpus) keeps them.
"""

from __future__ import annotations

from pathlib import Path

from ..beir import load_qrels, qrels_path, split_names
from ..errors import DataError
from ..fileio import atomic_file
from .sampling import corpus_order

_BOM = b"\xef\xbb\xbf"


def dev_query_ids(train_query_ids: list[str], fraction: float, seed: int) -> list[str]:
    """The `fraction` of the queries (at least one, never all) that the seeded order of `corpus_order` puts first;
    independent of input order."""
    ids = sorted(set(train_query_ids))
    if not 0 < fraction < 1:
        raise ValueError(f"the dev fraction must be in (0, 1), got {fraction}")
    if len(ids) < 2:
        raise ValueError(f"{len(ids)} labeled train queries cannot be split into train and dev")
    count = min(max(1, round(fraction * len(ids))), len(ids) - 1)
    return sorted(corpus_order(ids, seed)[:count])


def _query_id(line: bytes) -> str:
    return line.removeprefix(_BOM).split(b"\t")[0].strip().decode("utf-8", errors="replace")


def carve_dev(folder: str | Path, fraction: float, seed: int) -> bool:
    """Split `folder`/qrels/train.tsv into train and dev in place (see the module docstring). Returns whether it
    did: not when `fraction` is 0, there are no train qrels, or the dataset has dev qrels of its own."""
    train_path, dev_path = qrels_path(folder, "train"), qrels_path(folder, "dev")
    if fraction == 0 or dev_path.exists() or not train_path.exists():
        return False
    try:
        dev = set(dev_query_ids(list(load_qrels(train_path)), fraction, seed))
    except ValueError as error:
        raise DataError(f"{train_path}: {error}; set dataset.dev_fraction: 0 to keep every train query") from None
    lines = train_path.read_bytes().splitlines(keepends=True)
    if not lines[-1].endswith(b"\n"):
        lines[-1] += b"\r\n" if lines[0].endswith(b"\r\n") else b"\n"
    header = lines[:1] if lines[0].removeprefix(_BOM).split(b"\t")[:2] == [b"query-id", b"corpus-id"] else []
    body = lines[len(header) :]
    for path, rows in (
        (dev_path, [line for line in body if _query_id(line) in dev]),
        (train_path, [line for line in body if _query_id(line) not in dev]),
    ):
        with atomic_file(path, mode="wb") as handle:
            handle.writelines(header + rows)
    return True


def describe_splits(folder: str | Path) -> dict:
    """Queries per split and the dev split's query ids: the record the download stage commits."""
    qrels = {name: load_qrels(qrels_path(folder, name)) for name in split_names(folder)}
    return {
        "queries": {name: len(judged) for name, judged in qrels.items()},
        "dev_query_ids": sorted(qrels.get("dev", {})),
    }
