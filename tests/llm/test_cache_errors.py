"""A cache file that cannot be used fails with one plain CacheError naming the file, never a sqlite3 traceback."""

from __future__ import annotations

import os
import re
import sqlite3
from pathlib import Path

import pytest

from synthir.errors import SynthirError
from synthir.llm.base import Request
from synthir.llm.cached import CachedBackend
from synthir.llm.store import CacheError, CompletionCache, Entry

from .fakes import ScriptedBackend

ENTRY = Entry("text", 1, 1)


def filled(path: Path, count: int = 300) -> Path:
    """A real cache file with `count` rows of 500 characters (many pages, so a cut lands mid-file)."""
    with CompletionCache(path) as cache:
        cache.put_many("m", [(f"k{i}", Entry("x" * 500, 1, 1)) for i in range(count)])
    return path


def fails(path: Path, words: str) -> str:
    """Opening and using the cache at `path` raises a CacheError naming `path` and `words`."""
    with pytest.raises(CacheError, match=re.escape(words)) as caught, CompletionCache(path) as cache:
        cache.get_many(["k1"])
        cache.put_many("m", [("new", ENTRY)])
    message = str(caught.value)
    assert str(path) in message and words in message and isinstance(caught.value, SynthirError)
    assert caught.value.__suppress_context__ or caught.value.__cause__ is None  # no sqlite3 traceback chained in
    return message


def test_not_a_database(tmp_path: Path) -> None:
    path = tmp_path / "llm.sqlite"
    path.write_bytes(b"this is not an SQLite file\n" * 200)
    message = fails(path, "not an SQLite database (corrupt?)")
    assert "move it away or set SYNTHIR_CACHE_DIR" in message


@pytest.mark.parametrize("keep", [0.5, 0.98, 50])
def test_truncated_file(tmp_path: Path, keep: float) -> None:
    path = filled(tmp_path / "llm.sqlite")
    size = path.stat().st_size
    os.truncate(path, int(size * keep) if keep < 1 else int(keep))
    assert "move it away or set SYNTHIR_CACHE_DIR" in fails(path, "damaged")


def test_path_is_a_folder(tmp_path: Path) -> None:
    path = tmp_path / "llm.sqlite"
    path.mkdir()
    assert "is a folder" in fails(path, "set SYNTHIR_CACHE_DIR")


def test_parent_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "cache").write_text("not a folder")
    fails(tmp_path / "cache" / "llm.sqlite", "cannot create its folder")


@pytest.mark.parametrize("how", ["chmod", "read-only uri"])
def test_read_only_file(tmp_path: Path, monkeypatch, how: str) -> None:
    path = filled(tmp_path / "llm.sqlite", 3)
    if how == "chmod":
        path.chmod(0o444)
        if os.access(path, os.W_OK):
            pytest.skip("running as root: chmod does not stop writes (the 'read-only uri' case covers this)")
    else:  # what a read-only file gives sqlite, whoever runs the test
        connect = sqlite3.connect
        monkeypatch.setattr(sqlite3, "connect", lambda p, **kw: connect(f"file:{p}?mode=ro", uri=True, **kw))
    with CompletionCache(path) as cache:
        assert len(cache.get_many(["k1", "k2"])) == 2  # reading still works
        with pytest.raises(CacheError, match=r"llm\.sqlite: read-only") as caught:
            cache.put_many("m", [("new", ENTRY)])
        assert str(path) in str(caught.value)
        assert len(cache.get_many(["k1"])) == 1  # the connection survived the failed write


def test_disk_full_leaves_a_usable_connection(tmp_path: Path) -> None:
    path = filled(tmp_path / "llm.sqlite", 3)
    with CompletionCache(path) as cache:
        pages = cache._db.execute("PRAGMA page_count").fetchone()[0]
        cache._db.execute(f"PRAGMA max_page_count = {pages}")  # the file may not grow: as on a full disk
        big = [(f"big{i}", Entry("x" * 5000, 1, 1)) for i in range(10)]
        full = rf"^{re.escape(str(path))}: disk full — free some space or set SYNTHIR_CACHE_DIR$"
        with pytest.raises(CacheError, match=full):
            cache.put_many("m", big)
        assert len(cache) == 3  # the batch was rolled back whole
        cache._db.execute(f"PRAGMA max_page_count = {pages * 100}")  # space freed
        cache.put_many("m", big)
        assert len(cache) == 13


def test_a_failing_cache_stops_the_run_with_its_message(tmp_path: Path) -> None:
    path = filled(tmp_path / "llm.sqlite", 3)
    os.truncate(path, 100)
    with pytest.raises(CacheError, match="damaged"):
        CachedBackend(ScriptedBackend(), CompletionCache(path)).generate([Request(prompt="p")])


def test_locked_by_another_process(tmp_path: Path) -> None:
    path = filled(tmp_path / "llm.sqlite", 3)
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")  # another writer that does not let go
    try:
        locked = rf"^{re.escape(str(path))}: locked by another process for over 0\.1s — retry when it is done$"
        with CompletionCache(path, timeout=0.1) as cache, pytest.raises(CacheError, match=locked):
            cache.put_many("m", [("new", ENTRY)])
    finally:
        other.execute("ROLLBACK")
        other.close()
