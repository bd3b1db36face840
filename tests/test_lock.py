"""The committed dvc.lock and metrics are the record of the committed code: `dvc status` may report only data
this checkout lacks (a fresh clone has no DVC cache), never a changed command, params value or code dependency,
and every metrics and plots file dvc.yaml declares is committed and matches the lock."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from tests.conftest import REPO


def _dvc_status(project: Path = REPO) -> dict:
    dvc = Path(sys.executable).with_name("dvc")
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    done = subprocess.run([str(dvc), "status", "--json"], cwd=project, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout or "{}")


def _committed_outputs() -> set[str]:
    """Outputs kept in git rather than the DVC cache: metrics, plots, `cache: false` outs."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    paths = set()
    for stage in stages.values():
        for kind in ("outs", "metrics", "plots"):
            for entry in stage.get(kind) or []:
                if isinstance(entry, dict):
                    ((path, options),) = entry.items()
                    if kind != "outs" or (options or {}).get("cache") is False:
                        paths.add(path)
                elif kind != "outs":
                    paths.add(entry)
    return paths


def _is_committed_input(path: str) -> bool:
    """Code, params and the committed LLM completions: a clone always has them, so a change is never missing data."""
    return path.startswith(("src/", "stages/")) or path in ("params.yaml", "llm-cache")


def test_dvc_status_reports_only_missing_data():
    committed = _committed_outputs()
    problems = []
    for stage, changes in _dvc_status().items():
        for change in changes:
            if not isinstance(change, dict):
                problems.append(f"{stage}: {change}")  # "changed command", "always changed"
                continue
            for path, state in change.get("changed deps", {}).items():
                if _is_committed_input(path) or state not in ("deleted", "modified"):
                    problems.append(f"{stage}: dependency {path}: {state}")
            for path, state in change.get("changed outs", {}).items():
                if path in committed:
                    problems.append(f"{stage}: committed output {path}: {state}")
    assert problems == [], "rerun `dvc repro` and commit dvc.lock with the metrics (docs/reproducibility.md)"


def test_every_declared_metrics_file_is_committed():
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True).stdout.splitlines()
    missing = [p for p in sorted(_committed_outputs()) if not any(t == p or t.startswith(p + "/") for t in tracked)]
    assert missing == []


def test_a_changed_completion_file_makes_exactly_the_llm_stages_stale(tmp_path):
    """llm-cache/ decides what the LLM stages write: dvc.yaml lists it in their deps, and only theirs."""
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True).stdout.splitlines()
    for name in tracked:
        if (REPO / name).is_file():
            (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, tmp_path / name)
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    before = _dvc_status(tmp_path)
    first = sorted((tmp_path / "llm-cache").glob("*.jsonl*"))[0]
    first.write_bytes(first.read_bytes() + b"\n")  # one more (blank) line: the same completions, another file
    stale = {
        stage
        for stage, changes in _dvc_status(tmp_path).items()
        for change in changes
        if isinstance(change, dict) and "llm-cache" in change.get("changed deps", {})
    }
    assert stale == {"generate", "verify", "triples", "align_judge"}
    assert not any("llm-cache" in str(changes) for changes in before.values())
