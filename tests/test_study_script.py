"""scripts/study.py: one study run per clone."""

import importlib.util
import re
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
