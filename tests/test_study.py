"""The study's tables: seeds grouped into configurations, settings from params, paired tests against base."""

import json

import numpy as np
import pytest

from synthir.results.report import write_report
from synthir.results.runs import load_experiments
from synthir.results.study import FEW_SHOT, LABELED, ZERO_LABEL, configurations, setting_of
from tests.test_report import experiments, rev


def _study_rev(name: str, ndcg: float, sources: list[str], shift: float, split: str = "dev", **params) -> dict:
    entry = rev(name, ndcg)
    data = entry["data"]["params"]["params.yaml"]["data"]
    data |= {"dataset": {"dev_fraction": 0.2}, "evaluate": {"split": split}, "triples": {"sources": sources}}
    data["train"]["seed"] = int(name[-1]) if name[-1].isdigit() else 13
    data["generate"] = {"doc2query": {"enabled": True, "few_shot": params.get("few_shot", 0)}}
    entry["data"]["metrics"]["metrics/baseline.json"] = {"data": {"dense": {"ndcg@10": 0.6}, "bm25": {"ndcg@10": 0.7}}}
    rng = np.random.default_rng(0)  # the base model scores the same on every run of a split
    base = {f"q{i}": float(v) for i, v in enumerate(rng.random(60))}
    entry["data"]["per_query"] = {
        "split": split,
        "metrics": ["ndcg@10", "recall@100"],
        "systems": {
            "base": {q: [v, 1.0] for q, v in base.items()},
            "student": {q: [min(1.0, v + shift), 1.0] for q, v in base.items()},
        },
    }
    return entry


@pytest.fixture
def study(tmp_path):
    runs = [
        _study_rev("supervised-s1", 0.66, ["train"], 0.0),
        _study_rev("supervised-s2", 0.68, ["train"], 0.0),
        _study_rev("crop-s1", 0.70, ["cropped"], 0.2),
        _study_rev("crop-s2", 0.72, ["cropped"], 0.2),
        _study_rev("d2q-fewshot-s1", 0.65, ["doc2query"], 0.0, few_shot=2),
        _study_rev("crop-test-s1", 0.69, ["cropped"], 0.1, split="test"),
        rev("legacy", 0.5),  # before the protocol: in the list of every run only
    ]
    path = tmp_path / "experiments.json"
    path.write_text(json.dumps(experiments(*runs)))
    return path


def test_seeds_group_into_configurations(study):
    configs = {c.name: c for c in configurations(load_experiments(study))}
    assert sorted(configs) == ["crop", "crop-test", "d2q-fewshot", "supervised"]
    assert [r.name for r in configs["crop"].runs] == ["crop-s1", "crop-s2"]
    assert configs["crop"].values("ndcg@10") == [0.70, 0.72]
    assert configs["crop-test"].split == "test"


def test_settings_follow_the_labels_a_run_used():
    assert setting_of({"triples.sources": ("cropped",)}) == ZERO_LABEL
    assert setting_of({"triples.sources": ("train", "doc2query")}) == LABELED
    assert setting_of({"triples.sources": ("syntriever",)}) == LABELED
    d2q = {"triples.sources": ("doc2query",), "generate.doc2query.enabled": True}
    assert setting_of({**d2q, "generate.doc2query.few_shot": 2}) == FEW_SHOT
    assert setting_of({**d2q, "generate.doc2query.few_shot": 0}) == ZERO_LABEL
    aligned = {"triples.sources": ("cropped",), "align.enabled": True, "align.query_sources": ("train",)}
    assert setting_of(aligned) == LABELED


def test_report_tables_per_split_and_setting(study, tmp_path):
    write_report(load_experiments(study), "supervised", {}, ["ndcg@10"], tmp_path / "r", selected=["crop"])
    text = (tmp_path / "r" / "README.md").read_text()
    dev = text[text.index("### dev split") : text.index("### test split")]
    zero = dev[dev.index("**zero-label**") : dev.index("**label-augmented**")]
    row = next(line for line in zero.splitlines() if line.startswith("| crop |"))
    cells = [c.strip() for c in row.split("|")[1:-1]]
    assert cells[:3] == ["crop", "2 (screening)", "0.7100 ± 0.0141"]  # fewer than 3 seeds: marked
    assert cells[3].startswith("+0.") and "(p<0.001)" in cells[3]  # +0.2 per query (capped at 1) over base
    assert cells[4].startswith("+0.") and cells[6] == "✓"
    assert "Label-free systems (crop's baseline): base 0.6000, BM25 0.7000." in dev
    assert "| supervised | 2 (screening) | 0.6700 ± 0.0141 | +0.0000 (p=1.000) | — |" in dev
    assert "**few-shot prompts**" in dev and "| d2q-fewshot | 1 (screening) | 0.6500 |" in dev
    assert "| crop-test | 1 (screening) | 0.6900 |" in text[text.index("### test split") :]
    assert "| legacy |" in text[text.index("## Every run") :] and text.index("## The study") < text.index("## Every")
    for split in ("dev", "test"):
        assert (tmp_path / "r" / "figures" / f"study-{split}.png").read_bytes()[:4] == b"\x89PNG"


def test_unknown_selection_is_named(study, tmp_path):
    from synthir.errors import SynthirError

    with pytest.raises(SynthirError, match=r"report\.selected: no configuration named 'crops'"):
        write_report(load_experiments(study), "supervised", {}, ["ndcg@10"], tmp_path / "r", selected=["crops"])


def test_runs_of_one_name_with_different_params_are_separate_configurations(tmp_path):
    runs = [
        _study_rev("crop-s1", 0.70, ["cropped"], 0.2),
        _study_rev("crop-s2", 0.71, ["cropped"], 0.2),
        _study_rev("crop-s3", 0.60, ["train"], 0.0),  # the same name, other data: not a seed of crop
    ]
    del runs[1]["data"]["params"]["params.yaml"]["data"]["generate"]  # a block added later is not a difference
    path = tmp_path / "experiments.json"
    path.write_text(json.dumps(experiments(*runs)))
    configs = {c.name: [r.name for r in c.runs] for c in configurations(load_experiments(path))}
    assert configs == {"crop": ["crop-s1", "crop-s2"], "crop (2)": ["crop-s3"]}


def test_a_run_from_before_the_adapt_block_ran_without_adaptation(tmp_path):
    runs = [_study_rev(f"d2q-s{seed}", 0.70, ["doc2query"], 0.2) for seed in (1, 2, 3)]
    runs[1]["data"]["params"]["params.yaml"]["data"]["adapt"] = {"method": "none"}
    runs[2]["data"]["params"]["params.yaml"]["data"]["adapt"] = {"method": "tsdae"}
    path = tmp_path / "experiments.json"
    path.write_text(json.dumps(experiments(*runs)))
    configs = {c.name: [r.name for r in c.runs] for c in configurations(load_experiments(path))}
    assert configs == {"d2q": ["d2q-s1", "d2q-s2"], "d2q (2)": ["d2q-s3"]}


def _swept_rev(name: str, shift: float, fraction: float, sources=("doc2query",), split="dev", **train) -> dict:
    entry = _study_rev(name, 0.6 + shift / 2, list(sources), shift, split=split)
    data = entry["data"]["params"]["params.yaml"]["data"]
    data["sample"]["fraction"] = fraction
    data["train"] |= train
    data["triples"]["teacher"] = {"method": "hybrid" if "loss" in train else "none"}  # covered by `triples.teacher`
    return entry


def test_sweeps_group_configurations_that_differ_only_in_their_params(tmp_path):
    runs = [
        _swept_rev("d2q+frac11-s1", 0.1, 0.11),
        _swept_rev("d2q+frac11-s2", 0.1, 0.11),
        _swept_rev("d2q+frac01-s1", 0.0, 0.01),
        _swept_rev("d2q+frac25-s1", 0.1, 0.25),
        _swept_rev("d2q+frac11+distill-s1", 0.15, 0.11, loss="marginmse"),
        _swept_rev("crop+frac11-s1", 0.05, 0.11, sources=["cropped"]),
        _swept_rev("d2q+frac01-test-s1", 0.0, 0.01, split="test"),  # another split: never in a dev family
    ]
    path = tmp_path / "experiments.json"
    path.write_text(json.dumps(experiments(*runs)))
    sweeps = {
        "scale": ["sample.fraction"],
        "distillation": ["train.loss", "triples.teacher"],
        "queries": ["triples.sources"],
        "density": ["generate.doc2query.density"],
    }
    summary = write_report(load_experiments(path), "d2q+frac11", sweeps, ["ndcg@10"], tmp_path / "r")
    assert summary["sweeps"] == {
        "scale": [["d2q+frac01", "d2q+frac11", "d2q+frac25"]],  # by fraction, not by name
        "distillation": [["d2q+frac11", "d2q+frac11+distill"]],  # the switch off first
        "queries": [["crop+frac11", "d2q+frac11"]],
    }
    text = (tmp_path / "r" / "README.md").read_text()
    sweep = text[text.index("## Sweeps") : text.index("## Every run")]

    def rows(name: str) -> dict[str, str]:
        section = sweep[sweep.index(f"### {name}") :].split("\n### ")[0]
        return {line.split(" | ")[0][2:]: line for line in section.splitlines() if line.startswith("| d2q+")}

    scale = rows("scale")
    assert "| `sample.fraction=0.11` | 2 (screening) | 0.6500 ± 0.0000 | +0.0" in scale["d2q+frac11"]
    assert "(p<0.001) vs d2q+frac01 |" in scale["d2q+frac11"]
    assert "| +0.0000 (p=1.000) vs d2q+frac11 |" in scale["d2q+frac25"]  # a numeric step: against the previous
    distill = rows("distillation")["d2q+frac11+distill"]
    assert "`train.loss=marginmse`, `triples.teacher.method=hybrid`" in distill and "vs d2q+frac11 |" in distill
    assert "Sweeps without two comparable configurations yet: density." in sweep
    for name in ("scale", "distillation", "queries"):
        assert (tmp_path / "r" / "figures" / f"sweep-{name}.png").read_bytes()[:4] == b"\x89PNG"


def test_fewer_than_three_seeds_is_a_screening_run(study):
    from synthir.results.study import Configuration, _seeds

    run = load_experiments(study)[0]
    assert [_seeds(Configuration("x", [run] * n)) for n in (1, 2, 3, 4)] == ["1 (screening)", "2 (screening)", "3", "4"]


def test_seeds_scored_on_different_splits_are_refused(tmp_path):
    from synthir.errors import DataError

    mixed = _study_rev("crop-s2", 0.72, ["cropped"], 0.2)
    mixed["data"]["per_query"]["split"] = "test"  # params say dev: the committed scores are another split's
    path = tmp_path / "experiments.json"
    path.write_text(json.dumps(experiments(_study_rev("crop-s1", 0.70, ["cropped"], 0.2), mixed)))
    with pytest.raises(DataError, match=rf"{path}: the seeds mix splits \(crop-s1 on dev, crop-s2 on test\)"):
        write_report(load_experiments(path), "crop", {}, ["ndcg@10"], tmp_path / "r")
    assert not (tmp_path / "r" / "README.md").exists()
