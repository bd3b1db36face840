"""N processes take the step of one: the same loss curve and the same weights, for every loss.

`accelerate launch` starts two CPU processes that join over gloo; each embeds its shard of every global batch,
the shards' embeddings are gathered, and DDP averages the gradients. The single-process runs are the reference.
The encoder has no dropout, so that a step depends on its batch alone.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from synthir.config import FitParams, TrainParams
from synthir.fileio import write_jsonl
from synthir.stage import accelerate_arguments, free_port
from synthir.training.builders import setup
from synthir.training.curves import LOSS_CURVE
from synthir.training.train import backward, train

REPO = Path(__file__).resolve().parents[1]
LOSSES = ["mnrl", "snn", "partial_pl", "bt", "marginmse", "listwise"]


def examples(count: int) -> list[dict]:
    """Two positives and two mined negatives each, with a teacher's scores (the distillation losses); 13 examples
    at batch 4 leave a last batch of one, so that one of two processes has an empty shard."""
    return [
        {
            "query_id": f"q{i}",
            "query": f"question {i} about topic {i % 5}",
            "positive_ids": [f"d{i}", "synthetic"],
            "positives": [f"topic {i % 5} explained for case {i}", f"a synthetic answer {i} " * (1 + i % 3)],
            "negative_ids": [f"n{i}", f"m{i}"],
            "negatives": [f"unrelated passage {i}", f"another unrelated text {i} " * (1 + i % 4)],
            "teacher": {"method": "hybrid", "positive": 0.8, "negatives": [0.5 + 0.05 * (i % 5), 0.1 * (i % 4)]},
            "source": "train",
        }
        for i in range(count)
    ]


def run_params(model: str, loss: str) -> dict:
    """listwise runs with its contrastive term too: in-batch negatives span the processes' shards."""
    params = {"base_model": model, "loss": loss, "batch_size": 4, "epochs": 2, "lr": 1e-3, "num_negatives": 2}
    params["log_every"] = 1  # every step's loss, compared step by step
    if loss == "listwise":
        params |= {"teacher_temperature": 0.1, "contrastive_weight": 0.5}
    return params


def curve(live: Path) -> list[float]:
    rows = (live / "plots" / "metrics" / f"{LOSS_CURVE}.tsv").read_text().splitlines()[1:]
    return [float(row.split("\t")[-1]) for row in rows]


def launch_command(launch: TrainParams, environ: dict[str, str], spec: Path) -> list[str]:
    arguments = accelerate_arguments(launch, environ)
    return [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        *arguments,
        str(REPO / "tests" / "train_runs.py"),
        str(spec),
    ]


def launch_environment(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1", **extra}


@pytest.fixture(scope="module")
def two_process_runs(tmp_path_factory, deterministic_encoder) -> Path:
    """Every loss trained by 2 processes on one machine, and a run whose encoder is built into a fresh cache
    (`pooling` over the plain BERT folder under the sentence-transformers one) with a spy counting the builds."""
    folder = tmp_path_factory.mktemp("distributed")
    write_jsonl(folder / "train.jsonl", examples(13))
    runs = {
        loss: {"params": run_params(deterministic_encoder, loss), "triples": str(folder / "train.jsonl")}
        for loss in LOSSES
    }
    plain = str(Path(deterministic_encoder).parent / "bert")
    runs["built"] = {
        "params": {"base_model": plain, "pooling": "mean", "batch_size": 4, "max_steps": 1},
        "triples": str(folder / "train.jsonl"),
    }
    spec = {"out": str(folder / "two"), "runs": runs, "count_builds": str(folder / "builds.txt")}
    (folder / "spec.json").write_text(json.dumps(spec))
    launch = TrainParams(base_model=deterministic_encoder, num_processes=2)
    environ = launch_environment(SYNTHIR_CACHE_DIR=str(folder / "cache"))
    done = subprocess.run(
        launch_command(launch, environ, folder / "spec.json"), env=environ, capture_output=True, text=True, timeout=600
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


def test_the_encoder_cache_is_built_by_process_0_while_the_other_waits(two_process_runs):
    """Bug: both processes built the same cache folder at once (twice the work, and one swapped the folder
    under the other). Now process 0 builds it and the other waits at a barrier, then reads it."""
    assert (two_process_runs / "builds.txt").read_text() == "0\n"
    assert len(list((two_process_runs / "cache" / "encoders").iterdir())) == 1


def test_a_distributed_run_ends_its_process_group(two_process_runs):
    """train_runs.py ends each process as the training stages do (`end_distributed`); gloo prints no warning when
    a group is left alive, so the processes report whether one is."""
    ended = [json.loads(path.read_text()) for path in sorted((two_process_runs / "two").glob("ended-*.json"))]
    assert ended == [{"rank": 0, "group_left": False}, {"rank": 1, "group_left": False}]


@pytest.fixture(scope="module")
def two_machine_run(tmp_path_factory, deterministic_encoder) -> Path:
    """Two "machines" on loopback: two launches of one CPU process each, machine ranks 0 and 1, the same
    address and port, joined over gloo as the processes of two hosts would be."""
    folder = tmp_path_factory.mktemp("two-machines")
    write_jsonl(folder / "train.jsonl", examples(13))
    runs = {"mnrl": {"params": run_params(deterministic_encoder, "mnrl"), "triples": str(folder / "train.jsonl")}}
    (folder / "spec.json").write_text(json.dumps({"out": str(folder / "two"), "runs": runs}))
    launch = TrainParams(base_model=deterministic_encoder, num_processes=2, num_machines=2)
    port = str(free_port())
    machines = []
    for rank in ("0", "1"):
        environ = launch_environment(
            SYNTHIR_MACHINE_RANK=rank, SYNTHIR_MAIN_ADDRESS="127.0.0.1", SYNTHIR_MAIN_PORT=port
        )
        command = launch_command(launch, environ, folder / "spec.json")
        assert command[command.index("--machine_rank") + 1] == rank and "--num_machines" in command
        machines.append(
            subprocess.Popen(command, env=environ, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        )
    outputs = [machine.communicate(timeout=300) for machine in machines]
    for machine, (_, stderr) in zip(machines, outputs, strict=True):
        assert machine.returncode == 0, stderr[-3000:]
    return folder


def test_two_machines_train_exactly_like_one_process(tmp_path, two_machine_run, deterministic_encoder):
    params = FitParams(**run_params(deterministic_encoder, "mnrl"))
    run = setup(params, two_machine_run / "train.jsonl", tmp_path / "gradient-ckpt")
    backward(run, run.schedule[0])
    single = {name: p.grad for name, p in run.model.named_parameters() if p.grad is not None}
    double = torch.load(two_machine_run / "two" / "mnrl" / "gradients.pt")
    assert single.keys() == double.keys() and len(single) > 10
    for name in single:
        torch.testing.assert_close(double[name], single[name], atol=1e-10, rtol=1e-7, msg=name)
    train(params, two_machine_run / "train.jsonl", tmp_path / "model", tmp_path / "live", tmp_path / "ckpt")
    two = two_machine_run / "two" / "mnrl"
    assert len(curve(two / "live")) == 8
    assert curve(two / "live") == pytest.approx(curve(tmp_path / "live"), abs=1e-5)
    one_weights, two_weights = (
        load_file(tmp_path / "model" / "model.safetensors"),
        load_file(two / "model" / "model.safetensors"),
    )
    assert one_weights.keys() == two_weights.keys()
    for name in one_weights:
        torch.testing.assert_close(two_weights[name], one_weights[name], atol=1e-5, rtol=0, msg=name)
