import gzip
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from synthir.errors import ConfigError, DataError
from synthir.fileio import LineBounds
from synthir.llm import completions
from synthir.llm.base import Request, Sampling
from synthir.llm.cached import CachedBackend
from synthir.llm.completions import Exported, FileReport, export_cache, import_cache, import_folder
from synthir.llm.store import CompletionCache, cache_key, key_request
from tests.synth.fakes import ScriptedLLM

REPO = Path(__file__).resolve().parents[1]
RELEVANT = [{"role": "user", "content": "Is RELEVANT text relevant?"}]


def _requests() -> list[Request]:
    system = {"role": "system", "content": "You write search queries."}
    return [
        Request(messages=[system, {"role": "user", "content": f"Passage: topic {i}"}], sampling=Sampling(seed=i))
        for i in range(3)
    ]


def _exported(tmp_path: Path, name: str = "completions.jsonl", scores: bool = False) -> tuple[Path, list]:
    """A cache filled by the scripted LLM (3 texts, and a yes/no score if asked) exported to `name`."""
    here = CachedBackend(ScriptedLLM(), CompletionCache(tmp_path / f"{name}.sqlite"))
    first = here.generate(_requests())
    if scores:
        here.score_yes_no([RELEVANT])
    export_cache(here.cache, tmp_path / name)
    return tmp_path / name, first


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _write(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_a_cache_moves_to_another_machine_through_the_file(tmp_path):
    path, first = _exported(tmp_path)
    header, *lines = _lines(path)
    assert header["format"] == "synthir-completions/2"
    assert header["completions"] == 3 and header["models"] == {"scripted/llm": 3}
    assert [line["key"] for line in lines] == sorted(line["key"] for line in lines)
    assert {line["kind"] for line in lines} == {"text"}
    assert all(
        line["request"]["identity"] == {"backend": "scripted", "server": None, "model": "scripted/llm"}
        for line in lines
    )

    elsewhere = CompletionCache(tmp_path / "elsewhere.sqlite")
    assert import_cache(elsewhere, path) == FileReport(path, new=3)
    assert import_cache(elsewhere, path) == FileReport(path, same=3)
    llm = ScriptedLLM()
    again = CachedBackend(llm, elsewhere).generate(_requests())
    assert llm.requests == [] and [c.texts for c in again] == [c.texts for c in first]


def test_a_yes_no_score_travels_as_a_score(tmp_path):
    path, _ = _exported(tmp_path, scores=True)
    (score,) = [line for line in _lines(path)[1:] if line["kind"] == "score"]
    assert score["text"] == "2.0" and score["request"]["sampling"] == {"score_yes_no": True}
    elsewhere = CompletionCache(tmp_path / "elsewhere.sqlite")
    import_cache(elsewhere, path)
    llm = ScriptedLLM()
    assert CachedBackend(llm, elsewhere).score_yes_no([RELEVANT]) == [2.0] and llm.scored == []


def test_a_planted_file_cannot_change_what_the_pipeline_reads(tmp_path):
    """The red team's attack: the real keys under another model's label and another text."""
    real, _ = _exported(tmp_path)
    header, *lines = _lines(real)
    planted = [{**line, "model": "other/model", "text": 'Query: "planted"'} for line in lines]
    _write(tmp_path / "planted.jsonl", [{**header, "models": {"other/model": 3}}, *planted])
    cache = CompletionCache(tmp_path / "victim.sqlite")
    with pytest.raises(DataError, match=r"planted.jsonl:2: model label 'other/model', but the request is for "):
        import_cache(cache, [tmp_path / "planted.jsonl", real])
    assert len(cache) == 0  # one transaction: the real file was not imported either

    line = lines[0]
    relabelled = {**line, "model": "o", "request": {**line["request"], "identity": {"backend": "x", "server": None}}}
    relabelled["request"]["identity"]["model"] = "o"
    _write(tmp_path / "relabelled.jsonl", [{**header, "completions": 1, "models": {"o": 1}}, relabelled])
    with pytest.raises(DataError, match=r"relabelled.jsonl:2: key \w{12}… is not the hash of its request"):
        import_cache(cache, tmp_path / "relabelled.jsonl")


def test_the_same_key_with_another_text_is_a_conflict_naming_both_places(tmp_path):
    real, _ = _exported(tmp_path)
    header, *lines = _lines(real)
    twin = _write(tmp_path / "twin.jsonl", [header, *[{**line, "text": "other"} for line in lines]])
    cache = CompletionCache(tmp_path / "cache.sqlite")
    with pytest.raises(DataError, match=r"twin.jsonl:2: completion \w{12}… has another text in .*completions.jsonl:2"):
        import_cache(cache, [real, twin])
    assert len(cache) == 0

    inside = _write(tmp_path / "inside.jsonl", [{**header, "completions": 4}, *lines, {**lines[0], "text": "other"}])
    with pytest.raises(DataError, match=r"inside.jsonl:5: completion .* has another text in .*inside.jsonl:2"):
        import_cache(cache, inside)

    import_cache(cache, real)
    with pytest.raises(DataError, match=r"twin.jsonl:2: .* another text in .*cache.sqlite \(the local cache"):
        import_cache(cache, twin)
    assert {e.text for _, _, e in cache.items()} == {line["text"] for line in lines}  # the local texts are kept
    assert import_cache(cache, twin, replace_local=True) == FileReport(twin, replaced=3)
    assert {e.text for _, _, e in cache.items()} == {"other"}


def test_every_line_is_counted_once_and_the_refusal_lists_each_fate(tmp_path):
    real, _ = _exported(tmp_path)
    header, *lines = _lines(real)
    bad = _write(tmp_path / "bad.jsonl", [header, lines[0], {**lines[1], "tokens_in": -1}, lines[2]])
    cache = CompletionCache(tmp_path / "cache.sqlite")
    with pytest.raises(DataError) as refused:
        import_cache(cache, bad)
    assert str(refused.value).splitlines() == [
        f"{bad}:3: token counts must be whole numbers 0..10,000,000 (got -1, {lines[1]['tokens_out']})",
        f"{bad}: 3 completions: 2 new, 0 already cached, 0 conflicting, 1 refused",
        "nothing was imported",
    ]
    assert len(cache) == 0


def _line(tmp_path: Path) -> tuple[dict, dict]:
    real, _ = _exported(tmp_path)
    header, line, *_ = _lines(real)
    return {**header, "completions": 1, "models": {"scripted/llm": 1}}, line


BAD_LINES = {
    "nan created": ({"created": float("nan")}, r"created nan is not a time"),
    "infinite created": ({"created": float("inf")}, r"created inf is not a time"),
    "negative created": ({"created": -5.0}, r"created -5.0 is not a time"),
    "negative tokens": ({"tokens_out": -1}, r"token counts must be whole numbers"),
    "fractional tokens": ({"tokens_in": 1.5}, r"token counts must be whole numbers"),
    "boolean tokens": ({"tokens_in": True}, r"token counts must be whole numbers"),
    "upper-case key": ("upper", r"key '[0-9A-F]+… is not 64 lower-case hex digits"),
    "non-hex key": ({"key": "z" * 64}, r"key 'z+… is not 64 lower-case hex digits"),
    "short key": ({"key": "ab"}, r"key 'ab' is not 64 lower-case hex digits"),
    "a format field": ({"format": "synthir-completions/2"}, r"a header where a completion belongs"),
    "an unknown field": ({"extra": 1}, r"unknown field\(s\) 'extra'"),
    "no request": ("drop request", r"missing request"),
    "text not a string": ({"text": 7}, r"text is not a string"),
    "unknown kind": ({"kind": "image"}, r"kind 'image': expected 'text' or 'score'"),
    "a text called a score": ({"kind": "score"}, r"kind 'score', but the request is not a yes/no scoring"),
    "logprobs not asked for": ({"logprobs": {"yes": -0.1}}, r"logprobs must be token -> log-probability"),
    "control characters in the model": ({"model": "m\x00\x1b"}, r"model label 'm\\x00\\x1b'"),
}


@pytest.mark.parametrize("change", BAD_LINES.values(), ids=BAD_LINES.keys())
def test_a_line_that_is_not_a_verifiable_completion_is_refused_with_file_and_line(tmp_path, change):
    header, line = _line(tmp_path)
    edit, message = change
    if edit == "upper":
        line = {**line, "key": line["key"].upper()}
    elif edit == "drop request":
        line = {k: v for k, v in line.items() if k != "request"}
    else:
        line = {**line, **edit}
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(header) + "\n" + json.dumps(line, allow_nan=True) + "\n")
    cache = CompletionCache(tmp_path / "cache.sqlite")
    with pytest.raises(DataError, match=rf"bad.jsonl:2: {message}"):
        import_cache(cache, path)
    assert len(cache) == 0


def _score_file(tmp_path: Path, text: str) -> Path:
    request = key_request({"backend": "scripted", "server": None, "model": "m"}, "Is it?", {"score_yes_no": True}, 0)
    key = cache_key(request["identity"], "Is it?", {"score_yes_no": True}, 0)
    line = {"key": key, "model": "m", "kind": "score", "request": request, "text": text, "tokens_in": 0}
    header = {"format": completions.FORMAT, "synthir": "x", "exported": "t", "completions": 1, "models": {"m": 1}}
    return _write(tmp_path / "scores.jsonl", [header, {**line, "tokens_out": 0}])


@pytest.mark.parametrize("text", ["yes", "nan", "inf", "1e999", " 2.0", "2"])
def test_a_score_that_is_not_a_finite_number_as_written_is_refused(tmp_path, text):
    with pytest.raises(DataError, match=r"scores.jsonl:2: a score's text .* is not a"):
        import_cache(CompletionCache(tmp_path / "cache.sqlite"), _score_file(tmp_path, text))
    assert import_cache(CompletionCache(tmp_path / "ok.sqlite"), _score_file(tmp_path, "-1.25")).new == 1


def test_a_header_that_lies_about_the_file_is_refused(tmp_path):
    real, _ = _exported(tmp_path)
    header, *lines = _lines(real)
    liar = _write(tmp_path / "liar.jsonl", [{**header, "completions": 30}, *lines])
    with pytest.raises(DataError, match=r"liar.jsonl:1: the header promises 30 completions .* holds 3 "):
        import_cache(CompletionCache(tmp_path / "cache.sqlite"), liar)
    models = _write(tmp_path / "models.jsonl", [{**header, "models": {"gpt-9": 3}}, *lines])
    promise = r"the header promises 3 completions \{'gpt-9': 3\}, the file holds 3 \{'scripted/llm': 3\}"
    with pytest.raises(DataError, match=rf"models.jsonl:1: {promise}"):
        import_cache(CompletionCache(tmp_path / "cache.sqlite"), models)


def test_an_empty_file_a_bare_header_and_an_old_format_are_errors(tmp_path):
    real, _ = _exported(tmp_path)
    header, *lines = _lines(real)
    cache = CompletionCache(tmp_path / "cache.sqlite")
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(DataError, match=r"empty.jsonl: empty; a completions file starts with its header line"):
        import_cache(cache, tmp_path / "empty.jsonl")
    _write(tmp_path / "bare.jsonl", [{**header, "completions": 0, "models": {}}])
    with pytest.raises(DataError, match=r"bare.jsonl: holds a header and no completion"):
        import_cache(cache, tmp_path / "bare.jsonl")
    old = [{"format": "synthir-completions/1"}, {k: lines[0][k] for k in ("key", "model", "text", "tokens_in")}]
    _write(tmp_path / "old.jsonl", old)
    with pytest.raises(DataError, match=r"old.jsonl:1: format 'synthir-completions/1'; .* cannot be verified"):
        import_cache(cache, tmp_path / "old.jsonl")
    _write(tmp_path / "headless.jsonl", lines)
    with pytest.raises(DataError, match=r"headless.jsonl:1: format None; .* \(no header line\)"):
        import_cache(cache, tmp_path / "headless.jsonl")
    assert len(cache) == 0


def test_a_gzip_bomb_ends_at_the_line_bound_with_nothing_stored(tmp_path):
    path = tmp_path / "bomb.jsonl.gz"
    with gzip.open(path, "wb") as handle:  # 64 MiB of one line, ~64 KB on disk
        handle.write(b'{"format": "')
        for _ in range(64):
            handle.write(b"a" * (1 << 20))
    assert path.stat().st_size < 200_000
    cache = CompletionCache(tmp_path / "cache.sqlite")
    with pytest.raises(DataError, match=r"bomb.jsonl.gz:1: line longer than 1,048,576 bytes"):
        import_cache(cache, path)
    assert len(cache) == 0


def test_a_file_expanding_past_its_bound_is_refused(tmp_path, monkeypatch):
    real, _ = _exported(tmp_path)
    monkeypatch.setattr(completions, "BOUNDS", LineBounds(line_bytes=1 << 20, file_bytes=800))
    cache = CompletionCache(tmp_path / "cache.sqlite")
    with pytest.raises(DataError, match=r"completions.jsonl:\d: the file expands past 800 bytes"):
        import_cache(cache, real)
    assert len(cache) == 0


def test_an_entry_cached_before_requests_were_recorded_gets_its_request_on_a_hit(tmp_path):
    """Caches written by an older synthir: no `request` column. Opening adds it; a hit fills it; export works."""
    path = tmp_path / "old.sqlite"
    request = _requests()[0]
    identity = {"backend": "scripted", "server": None, "model": "scripted/llm"}
    key = cache_key(identity, request.input, request.sampling.as_dict(), 0)
    with sqlite3.connect(path) as db:
        db.execute(
            "CREATE TABLE completions (key TEXT PRIMARY KEY, model_id TEXT NOT NULL, text TEXT NOT NULL, "
            "tokens_in INTEGER NOT NULL, tokens_out INTEGER NOT NULL, logprobs TEXT, created REAL NOT NULL)"
        )
        db.execute("INSERT INTO completions VALUES (?, 'scripted/llm', 'old text', 1, 1, NULL, 1000.0)", (key,))
    cache = CompletionCache(path)
    with pytest.raises(ConfigError, match=r"the 1 completions selected were cached without their requests"):
        export_cache(cache, tmp_path / "out.jsonl")
    llm = ScriptedLLM()
    assert CachedBackend(llm, cache).generate([request])[0].texts == ["old text"] and llm.requests == []
    assert export_cache(cache, tmp_path / "out.jsonl") == Exported(written=1, unverifiable=0)
    assert import_cache(CompletionCache(tmp_path / "new.sqlite"), tmp_path / "out.jsonl").new == 1

    with cache.transaction() as db:
        db.execute("UPDATE completions SET request = NULL")
    assert import_cache(cache, tmp_path / "out.jsonl").same == 1  # an import of the same text records it too
    assert export_cache(cache, tmp_path / "again.jsonl").written == 1


def test_an_export_can_select_models_and_a_start_time(tmp_path):
    here = CachedBackend(ScriptedLLM(), CompletionCache(tmp_path / "here.sqlite"))
    here.generate(_requests()[:1])
    old = {key: (model, e) for key, model, e in here.cache.items()}
    with here.cache.transaction() as db:
        db.execute("UPDATE completions SET created = 1000.0")
    here.generate(_requests()[1:])
    assert export_cache(here.cache, tmp_path / "since.jsonl", since=1500.0) == Exported(2, 0)
    assert {line["key"] for line in _lines(tmp_path / "since.jsonl")[1:]}.isdisjoint(old)
    assert export_cache(here.cache, tmp_path / "model.jsonl", models=["scripted/llm"]).written == 3
    with pytest.raises(ConfigError, match=r"--model 'gpt-4o': selects no completion of"):
        export_cache(here.cache, tmp_path / "none.jsonl", models=["gpt-4o"])
    with pytest.raises(ConfigError, match=r"--since 4000000000: selects no completion"):
        export_cache(here.cache, tmp_path / "none.jsonl", since=4e9)
    with pytest.raises(ConfigError, match=r"holds no completion to export"):
        export_cache(CompletionCache(tmp_path / "empty.sqlite"), tmp_path / "none.jsonl")
    assert not (tmp_path / "none.jsonl").exists()


def test_an_export_never_replaces_a_file_holding_more_unless_forced(tmp_path):
    path, _ = _exported(tmp_path)
    before = path.read_bytes()
    smaller = CachedBackend(ScriptedLLM(), CompletionCache(tmp_path / "smaller.sqlite"))
    smaller.generate(_requests()[:1])
    with pytest.raises(ConfigError, match=r"completions.jsonl: holds 3 completions, this export 1; --force replaces"):
        export_cache(smaller.cache, path)
    assert path.read_bytes() == before
    assert export_cache(smaller.cache, path, force=True).written == 1
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n")
    with pytest.raises(ConfigError, match=r"notes.txt: not a completions file; --force replaces it"):
        export_cache(smaller.cache, notes)
    assert notes.read_text() == "my notes\n"


def test_an_export_refuses_a_link_or_a_device(tmp_path):
    _exported(tmp_path)
    cache = CompletionCache(tmp_path / "completions.jsonl.sqlite")
    (tmp_path / "link.jsonl").symlink_to(tmp_path / "target.jsonl")
    with pytest.raises(ConfigError, match=r"link.jsonl: is a link"):
        export_cache(cache, tmp_path / "link.jsonl")
    assert not (tmp_path / "target.jsonl").exists()
    with pytest.raises(ConfigError, match=r"/dev/null: not a regular file"):
        export_cache(cache, "/dev/null", force=True)
    with pytest.raises(ConfigError, match=r"not a regular file"):
        export_cache(cache, tmp_path, force=True)


def test_a_compressed_export_is_byte_stable_and_keeps_when_each_completion_was_written(tmp_path):
    here = CachedBackend(ScriptedLLM(), CompletionCache(tmp_path / "here.sqlite"))
    here.generate(_requests())
    path = tmp_path / "run.jsonl.gz"
    assert export_cache(here.cache, path).written == 3
    assert path.read_bytes()[:2] == b"\x1f\x8b"
    export_cache(here.cache, tmp_path / "again.jsonl.gz")
    body = lambda p: gzip.decompress(p.read_bytes()).splitlines()[1:]  # noqa: E731
    assert body(path) == body(tmp_path / "again.jsonl.gz")
    elsewhere = CompletionCache(tmp_path / "elsewhere.sqlite")
    assert import_cache(elsewhere, path).new == 3
    written = {key: e.created for key, _, e in here.cache.items()}
    assert {key: e.created for key, _, e in elsewhere.items()} == pytest.approx(written, abs=1e-3)


def test_a_damaged_compressed_file_is_named(tmp_path):
    path, _ = _exported(tmp_path, "run.jsonl.gz")
    path.write_bytes(path.read_bytes()[:-30])  # truncated in transit
    with pytest.raises(DataError, match=r"run.jsonl.gz:\d+: not a readable gzip file"):
        import_cache(CompletionCache(tmp_path / "elsewhere.sqlite"), path)


def test_a_folder_import_takes_every_export_in_it(tmp_path):
    folder = tmp_path / "llm-cache"
    folder.mkdir()
    _exported(folder, "a.jsonl.gz")
    (folder / "README.md").write_text("notes\n")
    cache = CompletionCache(tmp_path / "cache.sqlite")
    (report,) = import_folder(cache, folder)
    assert report == FileReport(folder / "a.jsonl.gz", new=3)
    with pytest.raises(DataError, match=r"missing: not a folder of completion files"):
        import_folder(cache, tmp_path / "missing")


def _cli(*args: str, cache_dir: Path, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "SYNTHIR_CACHE_DIR": str(cache_dir), "PYTHONPATH": str(REPO / "src")}
    return subprocess.run(
        [sys.executable, "-m", "synthir.cli", "cache", *args], env=env, capture_output=True, text=True, **kwargs
    )


def test_the_cli_reports_each_file_and_fails_in_one_transaction(tmp_path):
    real, _ = _exported(tmp_path)
    header, *lines = _lines(real)
    planted = _write(tmp_path / "planted.jsonl", [header, *[{**line, "text": "x"} for line in lines]])
    done = _cli("import", str(real), cache_dir=tmp_path / "c")
    assert done.returncode == 0, done.stderr
    assert f"{real}: 3 completions: 3 new, 0 already cached" in done.stdout
    failed = _cli("import", str(planted), cache_dir=tmp_path / "c")
    assert failed.returncode == 1 and "Traceback" not in failed.stderr
    assert failed.stderr.splitlines()[0].startswith(f"error: {planted}:2: completion ")
    assert failed.stderr.splitlines()[-1] == "error: nothing was imported"
    out = _cli("export", "-", cache_dir=tmp_path / "c")
    assert out.returncode == 0 and len(out.stdout.splitlines()) == 4 and "3 completions" in out.stderr


def test_a_file_of_many_bad_lines_lists_the_first_ten_and_counts_the_rest(tmp_path):
    header, line = _line(tmp_path)
    bad = [{**line, "tokens_in": -i - 1} for i in range(25)]
    path = _write(tmp_path / "bad.jsonl", [{**header, "completions": 25}, *bad])
    with pytest.raises(DataError) as refused:
        import_cache(CompletionCache(tmp_path / "cache.sqlite"), path)
    lines = str(refused.value).splitlines()
    assert len(lines) == 13 and lines[9].startswith(f"{path}:11: token counts")
    assert lines[10:] == [
        "... and 15 more",
        f"{path}: 25 completions: 0 new, 0 already cached, 0 conflicting, 25 refused",
        "nothing was imported",
    ]


@pytest.mark.parametrize(
    ("line", "why"), [("[" * 200_000, "nested too deeply"), ('{"key": ' + "9" * 5000 + "}", "Exceeds the limit")]
)
def test_a_line_of_endless_nesting_or_digits_is_refused_with_file_and_line(tmp_path, line, why):
    header, _ = _line(tmp_path)
    path = tmp_path / "deep.jsonl"
    path.write_text(json.dumps(header) + "\n" + line + "\n")
    with pytest.raises(DataError, match=rf"deep.jsonl:2: not JSON this reader accepts \({why}"):
        import_cache(CompletionCache(tmp_path / "cache.sqlite"), path)


def test_an_export_refuses_a_completion_an_import_could_not_read(tmp_path, monkeypatch):
    here = CachedBackend(ScriptedLLM(), CompletionCache(tmp_path / "here.sqlite"))
    here.generate(_requests())
    monkeypatch.setattr(completions, "BOUNDS", LineBounds(line_bytes=200, file_bytes=1 << 30))
    with pytest.raises(ConfigError, match=r"completion \w{12}… is longer than the 200 bytes a line may hold"):
        export_cache(here.cache, tmp_path / "out.jsonl")
    assert not (tmp_path / "out.jsonl").exists()


def test_an_export_reads_one_state_of_the_cache_while_another_process_writes(tmp_path, monkeypatch):
    here = CachedBackend(ScriptedLLM(), CompletionCache(tmp_path / "here.sqlite"))
    here.generate(_requests()[:2])
    elsewhere = CachedBackend(ScriptedLLM(), CompletionCache(tmp_path / "here.sqlite"))  # its own connection
    check_selection = completions._check_selection

    def check_while_another_writes(*args):
        elsewhere.generate(_requests()[2:])  # lands after the header was counted, before its lines are read
        return check_selection(*args)

    monkeypatch.setattr(completions, "_check_selection", check_while_another_writes)
    assert export_cache(here.cache, tmp_path / "out.jsonl").written == 2
    header, *lines = _lines(tmp_path / "out.jsonl")
    assert header["completions"] == len(lines) == 2
    assert len(here.cache) == 3  # the other write landed, after the snapshot
