import os
import stat
from pathlib import Path

import pytest

from synthir.errors import DataError
from synthir.fileio import atomic_dir, atomic_file, write_json


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_atomic_outputs_get_the_permissions_of_a_plain_write(tmp_path, umask_022):
    write_json(tmp_path / "metrics.json", {"a": 1})
    assert _mode(tmp_path / "metrics.json") == 0o644
    with atomic_dir(tmp_path / "model") as folder:
        (folder / "weights").write_text("w")
    assert _mode(tmp_path / "model") == 0o755
    os.umask(0o077)
    write_json(tmp_path / "private.json", {})
    assert _mode(tmp_path / "private.json") == 0o600


def test_a_folder_where_the_output_file_belongs_is_named(tmp_path):
    (tmp_path / "out.json").mkdir()
    with (
        pytest.raises(DataError, match=r"out.json: is a folder, expected a file path"),
        atomic_file(tmp_path / "out.json"),
    ):
        pass
    assert os.listdir(tmp_path) == ["out.json"]


def test_a_failed_write_leaves_the_previous_file(tmp_path):
    path = tmp_path / "out.txt"
    path.write_text("previous")
    with pytest.raises(RuntimeError, match=r"^interrupted mid-write$"), atomic_file(path) as handle:
        handle.write("half")
        raise RuntimeError("interrupted mid-write")
    assert path.read_text() == "previous" and os.listdir(tmp_path) == ["out.txt"]


def test_a_folder_whose_replacement_and_restore_both_fail_is_kept_and_named(tmp_path, monkeypatch):
    target = tmp_path / "model"
    target.mkdir()
    (target / "weights.bin").write_text("the only copy")
    real_replace, calls = os.replace, []

    def replace_failing_after_the_first(source, destination):
        calls.append((source, destination))
        if len(calls) > 1:  # moving the new folder in, then moving the old one back
            raise OSError(28, "No space left on device")
        real_replace(source, destination)

    monkeypatch.setattr(os, "replace", replace_failing_after_the_first)
    kept_in = r"model: not replaced .*its previous content is kept in (\S+)"
    with pytest.raises(OSError, match=kept_in) as caught, atomic_dir(target) as folder:
        (folder / "weights.bin").write_text("new")
    monkeypatch.undo()
    kept = Path(caught.value.args[0].split("kept in ")[1].split(" (")[0])
    assert (kept / "weights.bin").read_text() == "the only copy"
