import json

import pytest

from synthir.errors import SynthirError
from synthir.report import load_experiments, write_report

PARAMS = {"sample": {"fraction": 0.01}, "train": {"loss": "mnrl"}, "align": {"enabled": False, "loss": "partial_pl"}}


def rev(name: str, ndcg: float, **changes) -> dict:
    params = json.loads(json.dumps(PARAMS))
    for dotted, value in changes.items():
        block, key = dotted.split("__")
        params[block][key] = value
    metrics = {
        "metrics/eval.json": {
            "data": {
                "ndcg@10": ndcg,
                "recall@100": 0.9,
                "delta": {"ndcg@10": ndcg - 0.6},
                "baseline": {"ndcg@10": 0.6, "recall@100": 0.88},
                "seconds": {"total": 5.0},
            }
        },
        "metrics/generate.json": {
            "data": {
                "llm": {"calls": 3, "cache_hits": 7, "tokens_in": 30, "tokens_cached": 20, "tokens_out": 9},
                "seconds": 12.0,
            }
        },
    }
    return {
        "rev": f"{name:0<40}"[:40],
        "name": name,
        "data": {"params": {"params.yaml": {"data": params}}, "metrics": metrics, "timestamp": "2026-11-23T10:00:00"},
    }


def experiments(*revs, state="success") -> list[dict]:
    return [
        {
            "rev": "abc",
            "name": "main",
            "data": {},
            "experiments": [
                {"executor": None if state == "success" else {"state": state}, "name": r["name"], "revs": [r]}
                for r in revs
            ],
        }
    ]


@pytest.fixture
def exported(tmp_path):
    data = experiments(
        rev("default", 0.66),
        rev("scale-0.02", 0.67, sample__fraction=0.02),
        rev("scale-0.005", 0.65, sample__fraction=0.005),
        rev("align-bt", 0.68, align__enabled=True, align__loss="bt"),
        rev("mixed", 0.70, sample__fraction=0.02, train__loss="snn"),
    ) + experiments(rev("running", 0.99), state="running")
    path = tmp_path / "experiments.json"
    path.write_text(json.dumps(data))
    return path


def test_finished_runs_only(exported):
    assert [r.name for r in load_experiments(exported)] == ["align-bt", "default", "mixed", "scale-0.005", "scale-0.02"]


def test_report_writes_table_and_pngs(exported, tmp_path):
    sweeps = {"scale": ["sample.fraction"]}
    summary = write_report(load_experiments(exported), "default", sweeps, ["ndcg@10", "recall@100"], tmp_path / "r")
    assert summary["sweeps"] == {}  # runs from before the study's protocol are not configurations
    assert summary["figures"] == ["cost.png"]
    assert (tmp_path / "r" / "figures" / "cost.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = (tmp_path / "r" / "README.md").read_text()
    assert (
        "| mixed | `sample.fraction=0.02`; `train.loss=snn` | 0.7000 | 0.9000 | 0.1000 | 10 | 3 | 30 (20) / 9 |" in text
    )


def test_bad_inputs_are_named(tmp_path, exported):
    bad = tmp_path / "bad.json"
    bad.write_text('[\n{"rev": ')
    with pytest.raises(SynthirError, match=r"bad\.json:2: not JSON"):
        load_experiments(bad)
    with pytest.raises(SynthirError, match=r"report\.reference: no finished experiment or configuration named 'nope'"):
        write_report(load_experiments(exported), "nope", {}, ["ndcg@10"], tmp_path / "r")
    with pytest.raises(SynthirError, match="synthir export-experiments"):
        load_experiments(tmp_path / "missing.json")


def test_runs_on_a_corpus_without_qrels_are_reported_without_scores(tmp_path):
    unlabeled = rev("own-corpus", 0.0, sample__fraction=0.02)
    unlabeled["data"]["metrics"]["metrics/eval.json"]["data"] = {"skipped": "no test qrels: evaluation skipped"}
    path = tmp_path / "experiments.json"
    path.write_text(json.dumps(experiments(rev("default", 0.66), unlabeled)))
    runs = load_experiments(path)
    assert [r.name for r in runs] == ["default", "own-corpus"]
    write_report(runs, "default", {}, ["ndcg@10"], tmp_path / "r")
    assert "| own-corpus | `sample.fraction=0.02` | — | — |" in (tmp_path / "r" / "README.md").read_text()


def test_exports_from_several_clones_merge_run_by_run():
    from synthir.report import merge_exports

    here = [{"rev": "a", "experiments": [{"name": "default", "v": 1}, {"name": "snn", "v": 1}]}]
    there = [
        {"rev": "a", "experiments": [{"name": "snn", "v": 2}]},  # rerun elsewhere: replaces the older copy
        {"rev": "b", "experiments": [{"name": "fast-cpu-25", "v": 1}]},
    ]
    merged = merge_exports(here, there)
    assert [(e["rev"], [(r["name"], r["v"]) for r in e["experiments"]]) for e in merged] == [
        ("a", [("default", 1), ("snn", 2)]),
        ("b", [("fast-cpu-25", 1)]),
    ]
    assert here[0]["experiments"][1]["v"] == 1  # the inputs are left as they were
