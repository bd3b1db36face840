"""Every stage script, run the way dvc runs it, ends bad input with exit status 1 and one `error:` line, no
traceback and nothing written. The stages are found in stages/, so a new one is checked without being listed."""

from __future__ import annotations

import gzip
import json
import os
import re
import shlex
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from synthir.yamlfile import read_yaml

REPO = Path(__file__).resolve().parents[1]
STAGES = sorted(path.stem for path in (REPO / "stages").glob("*.py"))
TYPO = "sample.fractoin"
"""The bad input: a mistyped key in params.yaml, which every stage validates before its first output."""


def _interpolated(text: str) -> str:
    return re.sub(r"\$\{[^}]*\}", "x", text)


def _stage(stage: str) -> tuple[list[str], list[str]]:
    """The arguments dvc.yaml gives `stages/<stage>.py`, and which of them are its data deps (inputs)."""
    entry = read_yaml(REPO / "dvc.yaml")["stages"].get(stage)
    assert entry, f"stages/{stage}.py has no stage '{stage}' in dvc.yaml"
    words = shlex.split(_interpolated(entry["cmd"]))
    arguments = words[words.index(f"stages/{stage}.py") + 1 :]
    deps = {_interpolated(dep) for dep in entry.get("deps") or []}
    return arguments, [word for word in arguments if word in deps]


def _project(folder: Path, inputs: list[str], typo: bool = True) -> None:
    """A project folder: dvc.yaml, params.yaml (with the typo), and the stage's inputs, empty."""
    (folder / "dvc.yaml").write_bytes((REPO / "dvc.yaml").read_bytes())
    params = read_yaml(REPO / "params.yaml")
    params["generate"].pop("prompts_dir", None)  # a folder of the repository, relative to it
    if typo:
        block, key = TYPO.split(".")
        params[block][key] = 0.5
    (folder / "params.yaml").write_text(json.dumps(params, indent=1))  # JSON is YAML
    for name in inputs:
        path = folder / name
        if path.suffix:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()
        else:
            path.mkdir(parents=True, exist_ok=True)


def _snapshot(folder: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else None for p in sorted(folder.rglob("*"))}


def test_every_stage_script_is_checked():
    assert len(STAGES) >= 14 and {"download", "adapt", "train", "report"} <= set(STAGES)


def _run(stage: str, arguments: list[str], project: Path, **env: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "HF_HUB_OFFLINE": "1", "DVC_NO_ANALYTICS": "1", **env}
    command = [sys.executable, str(REPO / "stages" / f"{stage}.py"), *arguments]
    return subprocess.run(command, cwd=project, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("stage", STAGES)
def test_a_stage_ends_bad_params_with_one_error_line_and_exit_status_1(tmp_path, stage):
    arguments, inputs = _stage(stage)
    _project(tmp_path, inputs)
    before = _snapshot(tmp_path)
    done = _run(stage, arguments, tmp_path)
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
    assert errors == [f"error: params.yaml: {TYPO}: unknown key"], done.stderr[-2000:]
    assert done.returncode == 1, f"stages/{stage}.py exits {done.returncode} after: {errors}"
    assert _snapshot(tmp_path) == before, f"stages/{stage}.py wrote into its project"


LLM_STAGES = sorted(stage for stage in STAGES if "llm-cache" in _stage(stage)[1])


def test_the_stages_that_call_an_llm_import_the_committed_completions():
    assert LLM_STAGES == ["align_judge", "generate", "triples", "verify"]


@pytest.mark.parametrize("stage", LLM_STAGES)
def test_a_planted_completion_file_stops_an_llm_stage_before_it_writes(tmp_path, stage):
    """The red team's attack: committed completions' keys under another model's label and another text."""
    arguments, inputs = _stage(stage)
    _project(tmp_path, inputs, typo=False)
    real = sorted((REPO / "llm-cache").glob("*.jsonl.gz"))[0]
    header, line, *_ = (json.loads(text) for text in gzip.decompress(real.read_bytes()).splitlines())
    planted = {**line, "model": "other/model", "text": "planted"}
    header |= {"completions": 1, "models": {"other/model": 1}}
    (tmp_path / "llm-cache" / "real.jsonl.gz").write_bytes(real.read_bytes())
    (tmp_path / "llm-cache" / "planted.jsonl").write_text(json.dumps(header) + "\n" + json.dumps(planted) + "\n")
    before = _snapshot(tmp_path)
    done = _run(stage, arguments, tmp_path, SYNTHIR_CACHE_DIR=str(tmp_path.with_name(tmp_path.name + "-cache")))
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
    assert errors[0] == "error: llm-cache/planted.jsonl:2: model label 'other/model', but the request is for " + repr(
        line["model"]
    )
    assert errors[-1] == "error: nothing was imported" and done.returncode == 1
    assert _snapshot(tmp_path) == before
    cache = tmp_path.with_name(tmp_path.name + "-cache") / "llm.sqlite"
    assert sqlite3.connect(cache).execute("SELECT COUNT(*) FROM completions").fetchone() == (0,)
