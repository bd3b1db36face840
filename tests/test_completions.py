import gzip
import json

import pytest

from synthir.completions import Imported, export_cache, import_cache
from synthir.errors import DataError
from synthir.llm import CachedBackend, CompletionCache, Request, Sampling
from synthir.llm.cache import Entry
from tests.synth.fakes import ScriptedLLM


def _requests() -> list[Request]:
    system = {"role": "system", "content": "You write search queries."}
    return [
        Request(messages=[system, {"role": "user", "content": f"Passage: topic {i}"}], sampling=Sampling(seed=i))
        for i in range(3)
    ]


def test_a_cache_moves_to_another_machine_through_the_file(tmp_path):
    here = CachedBackend(ScriptedLLM(), CompletionCache(tmp_path / "here.sqlite"))
    first = here.generate(_requests())
    assert export_cache(here.cache, tmp_path / "completions.jsonl") == 3
    header, *lines = (tmp_path / "completions.jsonl").read_text().splitlines()
    assert json.loads(header)["completions"] == 3 and json.loads(header)["models"] == {"scripted/llm": 3}
    assert [json.loads(line)["key"] for line in lines] == sorted(json.loads(line)["key"] for line in lines)

    elsewhere = CompletionCache(tmp_path / "elsewhere.sqlite")
    assert import_cache(elsewhere, tmp_path / "completions.jsonl") == Imported(added=3, present=0, conflicts=0)
    assert import_cache(elsewhere, tmp_path / "completions.jsonl") == Imported(added=0, present=3, conflicts=0)
    llm = ScriptedLLM()
    again = CachedBackend(llm, elsewhere).generate(_requests())
    assert llm.requests == [] and [c.texts for c in again] == [c.texts for c in first]


def test_a_bad_file_is_named_and_nothing_is_imported(tmp_path):
    here = CachedBackend(ScriptedLLM(), CompletionCache(tmp_path / "here.sqlite"))
    here.generate(_requests())
    path = tmp_path / "completions.jsonl"
    export_cache(here.cache, path)
    lines = path.read_text().splitlines()
    path.write_text("\n".join([*lines[:2], json.dumps({"key": "x", "model": "m", "text": 1})]) + "\n")  # line 3
    empty = CompletionCache(tmp_path / "empty.sqlite")
    with pytest.raises(DataError, match=r"completions.jsonl:3: missing 'tokens_in'"):
        import_cache(empty, path)
    assert len(empty) == 0


def test_a_compressed_export_keeps_when_each_completion_was_written(tmp_path):
    here = CachedBackend(ScriptedLLM(), CompletionCache(tmp_path / "here.sqlite"))
    here.generate(_requests())
    path = tmp_path / "run.jsonl.gz"
    assert export_cache(here.cache, path) == 3
    assert path.read_bytes()[:2] == b"\x1f\x8b"  # gzip
    export_cache(here.cache, tmp_path / "again.jsonl.gz")
    header = lambda p: json.loads(gzip.decompress(p.read_bytes()).splitlines()[0])  # noqa: E731
    assert header(path) | {"exported": None} == header(tmp_path / "again.jsonl.gz") | {"exported": None}

    elsewhere = CompletionCache(tmp_path / "elsewhere.sqlite")
    assert import_cache(elsewhere, path).added == 3
    written = {key: e.created for key, _, e in here.cache.items()}
    assert {key: e.created for key, _, e in elsewhere.items()} == pytest.approx(written, abs=1e-3)
    llm = ScriptedLLM()
    CachedBackend(llm, elsewhere).generate(_requests())
    assert llm.requests == []  # a rerun after import makes no LLM call


def test_an_import_never_overwrites_a_different_completion(tmp_path):
    here = CachedBackend(ScriptedLLM(), CompletionCache(tmp_path / "here.sqlite"))
    here.generate(_requests())
    export_cache(here.cache, tmp_path / "theirs.jsonl")
    mine = CompletionCache(tmp_path / "mine.sqlite")
    key, model, entry = here.cache.items()[0]
    mine.put_many(model, [(key, Entry("my own text", entry.tokens_in, entry.tokens_out))])

    assert import_cache(mine, tmp_path / "theirs.jsonl") == Imported(added=2, present=0, conflicts=1)
    assert mine.get_many([key])[key].text == "my own text"


def test_an_export_can_select_models_and_a_start_time(tmp_path):
    cache = CompletionCache(tmp_path / "here.sqlite")
    cache.put_many("old/model", [("a" * 64, Entry("old", 1, 1, created=1000.0))])
    cache.put_many("new/model", [("b" * 64, Entry("new", 1, 1, created=2000.0))])
    assert export_cache(cache, tmp_path / "new.jsonl", models=["new/model"]) == 1
    assert export_cache(cache, tmp_path / "since.jsonl", since=1500.0) == 1
    assert json.loads((tmp_path / "since.jsonl").read_text().splitlines()[1])["text"] == "new"


def test_a_damaged_compressed_file_is_named(tmp_path):
    cache = CompletionCache(tmp_path / "here.sqlite")
    cache.put_many("m", [(f"{i:064d}", Entry("x" * 200, 1, 1)) for i in range(50)])
    path = tmp_path / "run.jsonl.gz"
    export_cache(cache, path)
    path.write_bytes(path.read_bytes()[:-30])  # truncated in transit
    with pytest.raises(DataError, match=r"run.jsonl.gz:\d+: not a readable gzip file"):
        import_cache(CompletionCache(tmp_path / "elsewhere.sqlite"), path)
