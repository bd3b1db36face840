import json
import subprocess
import sys

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
