"""The dev split: seeded, query-level, lines copied unchanged, nothing shared with train, a dataset's own dev kept."""

import pytest

from synthir.beir import load_dataset
from synthir.data.download import fetch_dataset
from synthir.data.splits import carve_dev, describe_splits, dev_query_ids
from tests.conftest import write_beir


def test_dev_ids_are_a_seeded_share_independent_of_order():
    ids = [f"q{i}" for i in range(100)]
    dev = dev_query_ids(ids, 0.2, 13)
    assert len(dev) == 20 and set(dev) <= set(ids)
    assert dev_query_ids(list(reversed(ids)), 0.2, 13) == dev
    assert dev_query_ids(ids, 0.2, 14) != dev


def test_dev_never_takes_every_query_or_none():
    assert len(dev_query_ids(["a", "b"], 0.9, 1)) == 1
    assert len(dev_query_ids(["a", "b", "c"], 0.01, 1)) == 1
    with pytest.raises(ValueError, match="cannot be split"):
        dev_query_ids(["a"], 0.2, 1)


def _labeled(folder):
    queries = [{"_id": f"q{i}", "text": f"question {i}"} for i in range(10)]
    train = [(f"q{i}", "d1", 1) for i in range(10)] + [("q3", "d2", 1)]  # q3 has two judgements
    return write_beir(folder, queries=queries, qrels={"train": train, "test": [("q0", "d3", 1)]})


def test_carve_moves_whole_queries_and_copies_lines(tmp_path):
    folder = _labeled(tmp_path / "data")
    original = (folder / "qrels" / "train.tsv").read_bytes().splitlines(keepends=True)
    assert carve_dev(folder, 0.3, 7)
    data = load_dataset(folder)
    train, dev = data.qrels["train"], data.qrels["dev"]
    assert len(dev) == 3 and not set(train) & set(dev) and set(train) | set(dev) == {f"q{i}" for i in range(10)}
    assert {**train, **dev} == load_dataset(_labeled(tmp_path / "again")).qrels["train"]
    carved = [(folder / "qrels" / f"{name}.tsv").read_bytes().splitlines(keepends=True) for name in ("train", "dev")]
    assert carved[0][0] == carved[1][0] == original[0]  # BEIR's header in both
    assert sorted(carved[0][1:] + carved[1][1:]) == sorted(original[1:])  # the same lines, CRLF kept
    assert data.qrels["test"] == {"q0": {"d3": 1}}
    assert describe_splits(folder) == {"queries": {"dev": 3, "test": 1, "train": 7}, "dev_query_ids": sorted(dev)}


def test_carve_keeps_a_datasets_own_dev_and_does_nothing_at_zero(tmp_path):
    own = write_beir(tmp_path / "own", qrels={"train": [("q1", "d1", 1), ("q2", "d2", 1)], "dev": [("q2", "d3", 1)]})
    before = (own / "qrels" / "train.tsv").read_bytes()
    assert not carve_dev(own, 0.5, 1)
    assert (own / "qrels" / "train.tsv").read_bytes() == before
    assert not carve_dev(_labeled(tmp_path / "zero"), 0.0, 1)
    assert not (tmp_path / "zero" / "qrels" / "dev.tsv").exists()
    assert not carve_dev(write_beir(tmp_path / "unlabeled"), 0.2, 1)  # test qrels only


def test_fetch_carves_inside_the_atomic_output(tmp_path, beir_dir):
    folder = _labeled(tmp_path / "src")
    dest = fetch_dataset("mine", tmp_path / "raw" / "mine", folder, dev_fraction=0.2, dev_seed=3)
    assert describe_splits(dest)["queries"] == {"dev": 2, "test": 1, "train": 8}
    assert "dev.tsv" not in {p.name for p in (folder / "qrels").iterdir()}  # the source is never touched


def test_scifact_dev_split(shared_beir, tmp_path):
    dest = fetch_dataset("scifact", tmp_path / "scifact", shared_beir / "scifact", dev_fraction=0.2, dev_seed=13)
    counts = describe_splits(dest)["queries"]
    assert counts == {"dev": 162, "test": 300, "train": 647}


def test_the_download_stage_records_its_splits(tmp_path):
    import json

    from synthir.config import DatasetParams
    from synthir.data.download import download_stage

    dataset = DatasetParams(name="mine", path=str(_labeled(tmp_path / "src")), dev_fraction=0.2, dev_seed=3)
    download_stage(dataset, tmp_path / "raw", tmp_path / "splits.json")
    record = json.loads((tmp_path / "splits.json").read_text())
    assert record == {"dev_fraction": 0.2, "dev_seed": 3, **describe_splits(tmp_path / "raw")}
    assert record["queries"] == {"dev": 2, "test": 1, "train": 8}
