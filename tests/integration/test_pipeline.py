"""`dvc repro` of the real dvc.yaml and stage scripts, offline, on a SciFact subset (a custom dataset)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from synthir.beir import load_dataset
from tests.conftest import REPO, write_beir

pytestmark = pytest.mark.integration


def _subset(shared_beir: Path, folder: Path, queries: int = 20) -> Path:
    """The first test queries of SciFact with their relevant documents plus 150 others."""
    data = load_dataset(shared_beir / "scifact", ["test"])
    qrels = dict(list(data.qrels["test"].items())[:queries])
    keep = {d for judged in qrels.values() for d in judged} | set(list(data.corpus)[:150])
    return write_beir(
        folder,
        corpus=[{"_id": d, **data.corpus[d]} for d in data.corpus if d in keep],
        queries=[{"_id": q, "text": data.queries[q]} for q in qrels],
        qrels={"test": [(q, d, g) for q, judged in qrels.items() for d, g in judged.items()]},
    )


def _run(cmd: list[str], cwd: Path) -> str:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def _stale(project: Path) -> set[str]:
    status = json.loads(_run(["dvc", "status", "--json"], project))
    return {name.split(":")[-1] for name in status}


@pytest.fixture
def project(tmp_path, shared_beir):
    project = tmp_path / "project"
    project.mkdir()
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(REPO / name, project / name)
    shutil.copytree(REPO / "stages", project / "stages")
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["dataset"] = {"name": "scifact-mini", "path": str(_subset(shared_beir, tmp_path / "scifact-mini"))}
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _run(["git", "init", "-q"], project)
    _run(["dvc", "init", "-q"], project)
    _run(["dvc", "config", "core.analytics", "false"], project)
    return project


def test_repro_then_only_affected_stages_go_stale(project):
    _run(["dvc", "repro"], project)
    baseline = json.loads((project / "metrics" / "baseline.json").read_text())
    assert baseline["dense"]["num_queries"] == 20 and 0 < baseline["dense"]["ndcg@10"] <= 1
    assert baseline["bm25"]["ndcg@10"] > 0.5
    ids = (project / "data" / "sample" / "doc_ids.txt").read_text().split()
    assert len(ids) == len(set(ids)) > 0
    assert _stale(project) == set()

    params = yaml.safe_load((project / "params.yaml").read_text())
    params["sample"]["fraction"] = 0.5
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert _stale(project) == {"sample"}
    _run(["dvc", "repro"], project)
    assert (project / "data" / "sample" / "doc_ids.txt").read_text().split()[: len(ids)] == ids

    params["train"]["query_prefix"] = "query: "
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert _stale(project) == {"baseline"}
