import json
import re
from pathlib import Path

import pytest

from synthir.errors import DataError, SynthirError
from synthir.results.report import write_report
from synthir.results.runs import load_experiments

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
    from synthir.results.runs import merge_exports

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


def _fake_dvc(monkeypatch, exported: list) -> list:
    """`dvc exp show` answers `exported`; returns the commands run."""
    import subprocess

    calls = []

    def answer(cmd, **kwargs):
        calls.append(cmd)
        stdout = json.dumps(exported) if cmd[0] == "dvc" else ""
        return subprocess.CompletedProcess(cmd, 0 if cmd[0] == "dvc" else 128, stdout=stdout, stderr="")

    monkeypatch.setattr(subprocess, "run", answer)
    return calls


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b'[\n{"rev": ', r":2: not JSON \(an export of experiments\): Expecting value"),
        (b"\xff[]", r": not UTF-8 text \(invalid start byte at byte 0\)"),
        (b"[" * 100_000 + b"]" * 100_000, r": JSON nested too deeply to be an export of experiments"),
        (b'{"rev": "a"}', r": expected the array `synthir export-experiments` writes, got an object; export again .*"),
        (b'["' + b"x" * 10_000 + b'"]', r": entry 1: expected an object with rev and experiments, got a string; .*"),
        (b'[{"experiments": []}]', r": entry 1: rev is null, expected a string; fix it or export again .*"),
        (b'[{"rev": "a", "experiments": {"name": "x"}}]', r": entry 1: experiments is an object, expected an .*"),
        (b'[{"rev": "a", "experiments": [{"name": "x"}, 7]}]', r": entry 1: experiment 2 is a number, expected .*"),
        (b'[{"rev": "a", "experiments": [{"name": ["x"]}]}]', r": entry 1: experiment 1: name is an array, .*"),
    ],
)
def test_merging_into_a_malformed_export_is_one_error_naming_the_file_before_dvc_runs(
    tmp_path, monkeypatch, capsys, content, message
):
    from synthir.cli import run

    out = tmp_path / "experiments.json"
    out.write_bytes(content)
    calls = _fake_dvc(monkeypatch, [{"rev": "b", "experiments": [{"name": "new", "revs": []}]}])
    assert run(["export-experiments", "--merge", "--output", str(out)]) == 1
    error = capsys.readouterr().err
    assert re.fullmatch(rf"error: {out}{message}\n", error), error[:300]
    assert len(error) < 300  # no echo of the file's content
    assert out.read_bytes() == content and list(tmp_path.iterdir()) == [out]
    assert calls == []  # checked before the slow `dvc exp show`


def test_merging_keeps_commits_without_experiments_and_adds_the_new_runs(tmp_path, monkeypatch, capsys):
    from synthir.cli import run

    out = tmp_path / "experiments.json"
    out.write_text(json.dumps([{"rev": "a", "experiments": None}, {"rev": "b", "experiments": [{"name": "old"}]}]))
    _fake_dvc(monkeypatch, [{"rev": "b", "experiments": [{"name": "new", "revs": []}]}])
    assert run(["export-experiments", "--merge", "--output", str(out)]) == 0
    assert [(e["rev"], [r["name"] for r in e["experiments"]]) for e in json.loads(out.read_text())] == [
        ("a", []),
        ("b", ["old", "new"]),
    ]


def _with_per_query(entry: dict, scores: dict, split: str = "dev") -> dict:
    entry["data"]["per_query"] = {
        "split": split,
        "metrics": ["ndcg@10", "recall@100"],
        "systems": {"student": {q: [v, 1.0] for q, v in scores.items()}},
    }
    return entry


@pytest.mark.parametrize(
    ("bad", "shown"), [(float("nan"), "nan"), (float("inf"), "inf"), (1.5, "1.5"), (-0.1, "-0.1"), ("0.5", "'0.5'")]
)
def test_a_bad_per_query_score_in_an_export_names_the_file_run_and_query(tmp_path, bad, shown):
    path = tmp_path / "experiments.json"
    path.write_text(json.dumps(experiments(_with_per_query(rev("crop-s1", 0.6), {"q1": 0.5, "q2": bad}))))
    expected = (
        rf"{path}: \[0\]\.experiments\[0\]\.revs\[0\]\.data\.per_query: system 'student', query 'q2': ndcg@10 is "
        rf"{re.escape(shown)}; a score is a number in \[0, 1\]"
    )
    with pytest.raises(DataError, match=expected):
        load_experiments(path)


def test_a_nan_in_an_exported_metrics_file_is_named(tmp_path):
    entry = rev("crop-s1", 0.6)
    entry["data"]["metrics"]["metrics/eval.json"]["data"]["delta"]["ndcg@10"] = float("nan")
    path = tmp_path / "experiments.json"
    path.write_text(json.dumps(experiments(entry)))
    with pytest.raises(DataError, match=r"metrics\['metrics/eval\.json'\]\.data\.delta\.ndcg@10 is nan"):
        load_experiments(path)


def _export_with(tmp_path, mutate) -> Path:
    data = experiments(_with_per_query(rev("crop-s1", 0.6), {"q1": 0.5, "q2": 0.7}))
    mutate(data)
    path = tmp_path / "experiments.json"
    path.write_text(json.dumps(data))
    return path


def _set(keys: tuple, value):
    def mutate(data):
        target = data
        for key in keys[:-1]:
            target = target[key]
        target[keys[-1]] = value

    return mutate


REV = (0, "experiments", 0, "revs", 0)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda data: data.append(["a list"]), r"\[1\]: expected an object, got an array"),
        (_set((0, "experiments"), {"a": 1}), r"\[0\]\.experiments: expected an array, got an object"),
        (_set((0, "experiments", 0, "revs"), "rev"), r"\[0\]\.experiments\[0\]\.revs: expected an array, got a string"),
        (_set((*REV, "data", "params", "params.yaml"), [1]), r"data\.params\['params\.yaml'\]: expected an object"),
        (_set((*REV, "data", "metrics"), [1]), r"\.data\.metrics: expected an object, got an array"),
        (_set((*REV, "name"), 7), r"revs\[0\]\.name: expected a string, got a number"),
        (_set((*REV, "data", "per_query", "systems"), [1]), r"per_query: 'systems': expected an object"),
        (_set((*REV, "data", "per_query", "systems", "student", "q1"), {"x": 1}), r"query 'q1': expected 2 scores"),
        (_set((*REV, "data", "per_query", "split"), "dev,test"), r"per_query: the record mixes the splits 'dev,test'"),
        (_set((*REV, "data", "per_query", "metrics"), "ndcg@10"), r"per_query: 'metrics': expected an array"),
    ],
)
def test_a_malformed_export_names_the_file_and_the_place(tmp_path, mutate, message):
    path = _export_with(tmp_path, mutate)
    with pytest.raises(DataError, match=rf"{path}: {message}" if message.startswith(r"\[") else message):
        load_experiments(path)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[" * 100_000 + "]" * 100_000, "JSON nested too deeply"),
        ("[" + "1" * 5000 + "]", "Exceeds the limit"),
        ("[NaN", "not JSON"),
    ],
)
def test_hostile_exports_end_in_one_error(tmp_path, text, message):
    path = tmp_path / "experiments.json"
    path.write_text(text)
    with pytest.raises(DataError, match=message):
        load_experiments(path)


def test_a_run_from_before_explicit_dtypes_is_the_same_configuration_as_one_after():
    """`evaluate.dtype: auto` (float32 on the CPU of every committed run) is today's `float32`; `evaluate.device`,
    absent before, is not compared."""
    from synthir.results.runs import Experiment, differences

    before = Experiment("a-s1", "r1", {"evaluate.dtype": "auto", "train.seed": 1}, {})
    after = Experiment("a-s2", "r2", {"evaluate.dtype": "float32", "evaluate.device": "cpu", "train.seed": 1}, {})
    assert differences(before, after) == set()
    assert differences(before, Experiment("b", "r3", {"evaluate.dtype": "bfloat16"}, {})) == {"evaluate.dtype"}


def test_the_newest_run_of_a_name_wins_by_the_timestamp_dvc_writes():
    """`dvc exp show --json` keeps each run's timestamp under `data`; every committed run has one."""
    runs = load_experiments(Path(__file__).resolve().parents[1] / "report" / "experiments.json")
    assert runs and all(run.timestamp.startswith("20") for run in runs)
