import json

import pytest

from synthir.completions import export_cache, import_cache
from synthir.errors import DataError
from synthir.llm import CachedBackend, CompletionCache, Request, Sampling
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
    lines = (tmp_path / "completions.jsonl").read_text().splitlines()
    assert [json.loads(line)["key"] for line in lines] == sorted(json.loads(line)["key"] for line in lines)

    elsewhere = CompletionCache(tmp_path / "elsewhere.sqlite")
    assert import_cache(elsewhere, tmp_path / "completions.jsonl") == 3
    assert import_cache(elsewhere, tmp_path / "completions.jsonl") == 0  # already there
    llm = ScriptedLLM()
    again = CachedBackend(llm, elsewhere).generate(_requests())
    assert llm.requests == [] and [c.texts for c in again] == [c.texts for c in first]


def test_a_bad_file_is_named_and_nothing_is_imported(tmp_path):
    here = CachedBackend(ScriptedLLM(), CompletionCache(tmp_path / "here.sqlite"))
    here.generate(_requests())
    path = tmp_path / "completions.jsonl"
    export_cache(here.cache, path)
    lines = path.read_text().splitlines()
    path.write_text("\n".join([*lines[:2], json.dumps({"key": "x", "model": "m", "text": 1})]) + "\n")
    empty = CompletionCache(tmp_path / "empty.sqlite")
    with pytest.raises(DataError, match=r"completions.jsonl:3: missing 'tokens_in'"):
        import_cache(empty, path)
    assert len(empty) == 0
