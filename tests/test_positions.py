"""A max_seq_length beyond the positions a model has embeddings for is refused by its flag or key, before
anything is encoded or trained (the tiny encoder has 128 positions)."""

import subprocess
import sys

import pytest

from synthir.config import TrainParams
from synthir.errors import ConfigError
from synthir.fileio import write_jsonl
from tests.conftest import run_stage, write_beir

LONG = " ".join(f"word{i}" for i in range(400))  # far past 128 tokens
EVALUATE = [sys.executable, "-m", "synthir.cli", "evaluate"]
LIMIT = ["--max-seq-length", "100000", "--output"]


def test_evaluate_refuses_a_max_seq_length_beyond_the_models_positions(tmp_path, tiny_encoder):
    corpus = [{"_id": "d1", "title": "", "text": LONG}, {"_id": "d2", "title": "", "text": "short"}]
    data = write_beir(tmp_path / "data", corpus, qrels={"test": [("q1", "d1", 1)]})
    output = tmp_path / "eval.json"
    done = subprocess.run(
        [*EVALUATE, "--model", tiny_encoder, "--data", str(data), *LIMIT, str(output)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 1
    assert done.stderr.splitlines()[-1] == "error: --max-seq-length: 100000 is beyond the model's 128 positions"
    assert "Traceback" not in done.stderr
    assert list(tmp_path.iterdir()) == [tmp_path / "data"]  # no metrics, run or per-query file


def test_train_refuses_a_max_seq_length_beyond_the_models_positions(tmp_path, tiny_encoder):
    from synthir.training.train import train

    rows = [
        {"query_id": f"q{i}", "query": f"topic {i}", "positive_ids": [f"d{i}"], "positives": [LONG], "negatives": []}
        for i in range(8)
    ]
    write_jsonl(tmp_path / "train.jsonl", rows)
    params = TrainParams(base_model=tiny_encoder, batch_size=4, epochs=1, lr=1e-3, max_seq_length=512)
    with pytest.raises(ConfigError, match=r"^train\.max_seq_length: 512 is beyond the model's 128 positions$"):
        train(params, tmp_path / "train.jsonl", tmp_path / "model", tmp_path / "live", tmp_path / "ckpt")
    assert not (tmp_path / "model").exists() and not (tmp_path / "ckpt").exists()


def test_the_baseline_stage_refuses_train_max_seq_length_beyond_the_models_positions(tmp_path, tiny_encoder):
    corpus = [{"_id": "d1", "title": "", "text": LONG}, {"_id": "d2", "title": "", "text": "short"}]
    write_beir(tmp_path / "data", corpus, qrels={"test": [("q1", "d1", 1)]})
    outputs = ["--output", "m.json", "--details", "details", "--per-query", "pq.json"]
    train = {"base_model": tiny_encoder, "max_seq_length": 512}
    done = run_stage("baseline", tmp_path, ["--data", "data", *outputs], {"train": train})
    assert done.returncode == 1, done.stderr[-2000:]
    assert done.stderr.splitlines()[-1] == "error: train.max_seq_length: 512 is beyond the model's 128 positions"
    assert not {"m.json", "details", "pq.json"} & {p.name for p in tmp_path.iterdir()}
