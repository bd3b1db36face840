"""benchmarks/gpu_check.py: its CPU smoke run passes every section here, so the GPU check cannot rot unseen."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO

SECTIONS = ["train_throughput", "encode_search", "hf_backend", "train_stage"]


def load_gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # where its dataclasses look themselves up
    spec.loader.exec_module(module)
    return module


def test_the_cpu_smoke_run_passes_every_section(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "HF_HUB_OFFLINE": "1", "DVC_NO_ANALYTICS": "1"}
    env.pop("OUT", None)
    command = [sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--cpu-smoke", "--out", str(tmp_path)]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for name in SECTIONS:
        record = json.loads((tmp_path / f"{name}.json").read_text())
        assert record["section"] == name and record["mode"] == "cpu-smoke"
        assert record["pass"] is True, json.dumps(record, indent=1)[:3000]
        assert record["criteria"] and all(c["pass"] for c in record["criteria"])
    stage = json.loads((tmp_path / "train_stage.json").read_text())
    assert stage["killed"]["exit"] == -9 and stage["resumed"]["resumed_from_step"] == 4
    assert stage["weights"]["max_abs_difference"] == 0.0  # on the CPU, the resumed run is exact
    assert stage["launch"][:1] == ["--cpu"]  # the stage's own accelerate arguments, from the preset's train block
    table = (tmp_path / "summary.txt").read_text()
    assert all(f"{name}" in table for name in SECTIONS) and "FAIL" not in table


def test_a_failing_section_is_recorded_and_the_next_still_runs(tmp_path, monkeypatch):
    gpu_check = load_gpu_check()

    def broken(ws):
        raise RuntimeError("CUDA out of memory (a test double)")

    def fine(ws):
        return {"criteria": [{"name": "ran", "pass": True, "value": 1, "limit": "1"}]}

    monkeypatch.setattr(gpu_check, "SECTIONS", {"broken": broken, "fine": fine})
    cache = os.environ.get("SYNTHIR_CACHE_DIR")
    assert gpu_check.main(["--cpu-smoke", "--sections", "broken,fine", "--out", str(tmp_path)]) == 1
    failed = json.loads((tmp_path / "broken.json").read_text())
    assert failed["pass"] is False and failed["error"] == "RuntimeError: CUDA out of memory (a test double)"
    assert "Traceback" in failed["traceback"]
    assert json.loads((tmp_path / "fine.json").read_text())["pass"] is True
    assert "FAIL" in (tmp_path / "summary.txt").read_text()
    assert os.environ.get("SYNTHIR_CACHE_DIR") == cache  # its private cache folder is not left behind


def test_a_section_without_criteria_does_not_pass(tmp_path, monkeypatch):
    gpu_check = load_gpu_check()
    monkeypatch.setattr(gpu_check, "SECTIONS", {"empty": lambda ws: {}})
    assert gpu_check.main(["--cpu-smoke", "--sections", "empty", "--out", str(tmp_path)]) == 1


@pytest.mark.parametrize("sections", ["train_stage,nonsense", "../x", "train\x1b[2J"])
def test_an_unknown_section_is_refused_by_its_flag(sections, capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_:
        load_gpu_check().main(["--cpu-smoke", "--sections", sections, "--out", str(tmp_path)])
    assert exit_.value.code == 2
    assert "--sections: unknown section" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_an_out_folder_that_is_a_file_is_refused_by_its_flag(capsys, tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(SystemExit) as exit_:
        load_gpu_check().main(["--cpu-smoke", "--out", str(tmp_path / "file" / "x")])
    assert exit_.value.code == 2 and "--out" in capsys.readouterr().err


def test_the_gpu_check_refuses_to_run_without_a_gpu(capsys, tmp_path):
    gpu_check = load_gpu_check()
    if gpu_check.torch.cuda.is_available():
        pytest.skip("a GPU is here")
    with pytest.raises(SystemExit) as exit_:
        gpu_check.main(["--out", str(tmp_path)])
    assert exit_.value.code == 2 and "--cpu-smoke" in capsys.readouterr().err


def test_bundled_models_are_replaced_in_every_block():
    gpu_check = load_gpu_check()
    params = {"sample": {"model": "pkg:m/model"}, "triples": {"sources": ["train"], "judge": None}, "k": 3}
    params["verify"] = {"judge": {"model": "pkg:a{1..2}/b{1..2}.bin"}, "round_trip": {"model": "org/name"}}
    replaced = gpu_check.local_models(params, "/tmp/enc")
    assert replaced["sample"]["model"] == "/tmp/enc" and replaced["verify"]["judge"]["model"] == "/tmp/enc"
    assert replaced["verify"]["round_trip"]["model"] == "org/name" and replaced["triples"]["sources"] == ["train"]
    assert replaced["k"] == 3 and replaced["triples"]["judge"] is None


def test_memory_is_extrapolated_along_the_line_through_two_corpus_sizes():
    gpu_check = load_gpu_check()
    gib = gpu_check.GIB
    figures = gpu_check.memory_figures(1 * gib, 3 * gib, 20_000, 100_000)  # 2 GiB more for 80k documents
    assert figures["gpu_memory_gib_per_100k"] == 2.5
    assert figures["gpu_memory_gib_extrapolated"] == {"1M": 25.5, "5M": 125.5}
    assert gpu_check.memory_figures(None, None, 1, 2) == {"gpu_memory": "not measured on the CPU"}


def test_the_top10_check_catches_a_search_that_returns_the_wrong_documents(tmp_path):
    gpu_check = load_gpu_check()
    from synthir.retrieval import load_encoder

    ws = gpu_check.Workspace(gpu_check.SMOKE, tmp_path, smoke=True)
    model = load_encoder(ws.encoder("tiny"), 64)
    passages = ws.texts(300, 12, seed=1)
    queries = {f"q{i}": text for i, text in enumerate(ws.texts(5, 4, seed=2))}
    run, _, _ = gpu_check.search_once(model, passages, queries, batch=64)
    right = gpu_check.reference_check(model, passages, queries, run, 64)
    assert right == {"top10_worst_shortfall": 0.0, "top10_identical_sets": "5/5"}
    others = [f"d{i}" for i in range(300) if f"d{i}" not in run["q0"]]
    wrong = {**run, "q0": dict.fromkeys(others[:10], 0.0)}  # ten documents outside the true top-10
    caught = gpu_check.reference_check(model, passages, queries, wrong, 64)
    assert caught["top10_worst_shortfall"] > gpu_check.SCORE_TOLERANCE and caught["top10_identical_sets"] == "4/5"
