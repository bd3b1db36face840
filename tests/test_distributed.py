"""N processes take the step of one: the same loss curve and the same weights, for every loss.

`accelerate launch` starts two CPU processes that join over gloo; each embeds its shard of every global batch,
the shards' embeddings are gathered, and DDP averages the gradients. The single-process runs are the reference.
The encoder has no dropout, so that a step depends on its batch alone.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from synthir.config import FitParams, TrainParams
from synthir.fileio import write_jsonl
from synthir.stage import accelerate_arguments
from synthir.train import LOSS_CURVE, backward, setup, train

REPO = Path(__file__).resolve().parents[1]
LOSSES = ["mnrl", "snn", "partial_pl", "bt"]


def examples(count: int) -> list[dict]:
    """Two positives and two mined negatives each; 13 examples at batch 4 leave a last batch of one, so that one
    of two processes has an empty shard."""
    return [
        {
            "query_id": f"q{i}",
            "query": f"question {i} about topic {i % 5}",
            "positive_ids": [f"d{i}", "synthetic"],
            "positives": [f"topic {i % 5} explained for case {i}", f"a synthetic answer {i} " * (1 + i % 3)],
            "negative_ids": [f"n{i}", f"m{i}"],
            "negatives": [f"unrelated passage {i}", f"another unrelated text {i} " * (1 + i % 4)],
            "source": "train",
        }
        for i in range(count)
    ]


def run_params(model: str, loss: str) -> dict:
    return {"base_model": model, "loss": loss, "batch_size": 4, "epochs": 2, "lr": 1e-3, "num_negatives": 2}


def curve(live: Path) -> list[float]:
    rows = (live / "plots" / "metrics" / f"{LOSS_CURVE}.tsv").read_text().splitlines()[1:]
    return [float(row.split("\t")[-1]) for row in rows]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_process_runs(tmp_path_factory, deterministic_encoder) -> Path:
    folder = tmp_path_factory.mktemp("distributed")
    write_jsonl(folder / "train.jsonl", examples(13))
    spec = {
        "out": str(folder / "two"),
        "runs": {
            loss: {"params": run_params(deterministic_encoder, loss), "triples": str(folder / "train.jsonl")}
            for loss in LOSSES
        },
    }
    (folder / "spec.json").write_text(json.dumps(spec))
    launch = TrainParams(base_model=deterministic_encoder, num_processes=2, launch=f"--main_process_port {free_port()}")
    command = [sys.executable, "-m", "accelerate.commands.launch", *accelerate_arguments(launch)]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [*command, str(REPO / "tests" / "train_runs.py"), str(folder / "spec.json")],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return folder


@pytest.mark.parametrize("loss", LOSSES)
def test_two_processes_train_exactly_like_one(tmp_path, two_process_runs, deterministic_encoder, loss):
    one = train(
        FitParams(**run_params(deterministic_encoder, loss)),
        two_process_runs / "train.jsonl",
        tmp_path / "model",
        tmp_path / "live",
        tmp_path / "ckpt",
    )
    two = two_process_runs / "two" / loss
    summary_steps = one["steps"]
    assert len(curve(two / "live")) == summary_steps == 8  # 13 examples at batch 4, two epochs: 4 + 4 batches
    assert curve(two / "live") == pytest.approx(curve(tmp_path / "live"), abs=1e-5)
    single, double = load_file(tmp_path / "model" / "model.safetensors"), load_file(two / "model" / "model.safetensors")
    assert single.keys() == double.keys()
    base = load_file(Path(deterministic_encoder) / "model.safetensors")
    moved = [name for name in single if not torch.allclose(single[name], base[name], atol=1e-4)]
    assert len(moved) > len(single) // 2, "the runs must train, or equal weights prove nothing"
    for name in single:
        torch.testing.assert_close(double[name], single[name], atol=1e-5, rtol=0, msg=name)


@pytest.mark.parametrize("loss", LOSSES)
def test_two_processes_compute_the_gradient_of_the_global_batch(
    tmp_path, two_process_runs, deterministic_encoder, loss
):
    run = setup(FitParams(**run_params(deterministic_encoder, loss)), two_process_runs / "train.jsonl", tmp_path)
    backward(run, run.schedule[0])
    single = {name: p.grad for name, p in run.model.named_parameters() if p.grad is not None}
    double = torch.load(two_process_runs / "two" / loss / "gradients.pt")
    assert single.keys() == double.keys() and len(single) > 10
    for name in single:  # the scale too: Adam would hide a gradient off by a constant factor
        torch.testing.assert_close(double[name], single[name], atol=1e-10, rtol=1e-7, msg=name)
