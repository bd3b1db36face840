"""scripts/study.py: one study run per clone."""

import importlib.util
import re
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "study.py"


def load_script():
    spec = importlib.util.spec_from_file_location("study_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_second_study_run_in_the_same_clone_is_refused(tmp_path):
    """A second run would rewrite params.yaml under the first (the run cache then files the first run's model
    under the second's params); it stops naming the clone, and the lock is free again once the first ends."""
    study = load_script()
    first = study.hold_clone(tmp_path)
    with pytest.raises(SystemExit, match=f"another scripts/study.py runs in {re.escape(str(tmp_path))}"):
        study.hold_clone(tmp_path)
    first.close()
    study.hold_clone(tmp_path).close()


def test_experiment_names_and_unknown_presets():
    study = load_script()
    assert study.experiment_name("crop+frac25", 2, test=True) == "crop+frac25-test-s2"
    with pytest.raises(SystemExit, match=r"no preset study/nope\.yaml"):
        study.presets("crop+nope")


def run_main(study, monkeypatch, *argv: str) -> None:
    monkeypatch.setattr("sys.argv", ["study.py", *argv])
    study.main()


def test_export_merges_each_run_as_it_ends(tmp_path, monkeypatch, capsys):
    """A run lives in its clone's git refs; --export merges each one into FILE as soon as it ends, so a clone on a
    machine that goes away does not take the finished runs with it."""
    study = load_script()
    monkeypatch.chdir(tmp_path)
    run_main(study, monkeypatch, "--dry-run", "--seeds", "1,2", "--export", "out.json", "crop+frac25")
    commands = [line for line in capsys.readouterr().out.splitlines() if line.startswith("$ ")]
    runs = [i for i, line in enumerate(commands) if line.startswith("$ dvc exp run")]
    exports = [i for i, line in enumerate(commands) if line.startswith("$ synthir export-experiments")]
    assert [commands[i].split()[5] for i in runs] == ["crop+frac25-s1", "crop+frac25-s2"]
    assert exports == [runs[0] + 1, runs[1] + 1]  # right after each run, not at the end
    assert commands[exports[0]] == f"$ synthir export-experiments --merge --output {tmp_path / 'out.json'}"


@pytest.mark.parametrize(
    ("target", "message"),
    [("missing/out.json", "missing/out.json: no folder"), (".", ".: not a file"), ("../..", "../..: not a file")],
)
def test_export_to_a_place_it_cannot_write_stops_before_any_run(tmp_path, monkeypatch, capsys, target, message):
    study = load_script()
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "sub")
    with pytest.raises(SystemExit) as stopped:
        run_main(study, monkeypatch, "--dry-run", "--export", target, "crop")
    assert stopped.value.code == 2
    err = capsys.readouterr()
    assert f"argument --export: {message}" in err.err
    assert "dvc exp run" not in err.out


def test_a_failed_export_is_reported_and_the_next_run_still_goes(tmp_path, monkeypatch, capsys):
    """A test double for subprocess.call: every command succeeds except the export."""
    study = load_script()
    called = []

    def fake_call(command, cwd):
        called.append(command[:3])
        return 1 if command[:2] == ["synthir", "export-experiments"] else 0

    monkeypatch.setattr(study.subprocess, "call", fake_call)
    monkeypatch.setattr(study, "hold_clone", lambda: None)
    with pytest.raises(SystemExit, match=r"failed: crop-s1 \(its export\), crop-s2 \(its export\)"):
        run_main(study, monkeypatch, "--seeds", "1,2", "--export", str(tmp_path / "out.json"), "crop")
    assert sum(c == ["dvc", "exp", "run"] for c in called) == 2
    assert "the runs stay in this clone" in capsys.readouterr().out


def test_each_run_starts_from_the_committed_params_even_when_a_killed_run_left_its_own_staged(tmp_path):
    """A `dvc exp run` killed mid-run leaves its params.yaml staged; restoring from the index would start the next
    configuration from the killed one's params (it happened: a cropped-sentence run carried doc2query's LLM)."""
    study = load_script()

    def git(*args: str) -> None:
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "params.yaml").write_text("generate:\n  model: committed\n")
    git("add", "params.yaml")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "params")
    (tmp_path / "params.yaml").write_text("generate:\n  model: the killed run's\n")
    git("add", "params.yaml")
    (tmp_path / "params.yaml").write_text("generate:\n  model: unstaged edit\n")
    subprocess.run(study.RESET_PARAMS, cwd=tmp_path, check=True, capture_output=True)
    assert (tmp_path / "params.yaml").read_text() == "generate:\n  model: committed\n"
    staged = subprocess.run(["git", "diff", "--cached", "--name-only"], cwd=tmp_path, capture_output=True, text=True)
    assert staged.stdout == ""
