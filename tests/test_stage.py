import os
import subprocess
import sys

import pytest
import yaml

from synthir.errors import ConfigError
from synthir.stage import declared_params, stage_params
from tests.conftest import REPO


@pytest.fixture
def project(tmp_path):
    """params.yaml and a dvc.yaml declaring a stage that reads part of two blocks."""
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    stages = {
        "probe": {
            "cmd": "true",
            "params": ["align.enabled", "train.query_prefix", "evaluate", {"params.yaml": ["sample.seed"]}],
        }
    }
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}))
    return tmp_path


def test_declared_params_are_read_from_dvc_yaml(project):
    assert declared_params("probe", project / "dvc.yaml") == [
        "align.enabled",
        "train.query_prefix",
        "evaluate",
        "sample.seed",
    ]
    with pytest.raises(ConfigError, match="no stage 'absent'"):
        declared_params("absent", project / "dvc.yaml")


def test_a_stage_reads_what_it_declares_and_nothing_else(project):
    params = stage_params("probe", project / "params.yaml", project / "dvc.yaml")
    assert params.align.enabled is False and params.train.query_prefix == ""
    assert params.evaluate.bm25.k1 == 1.5 and params.evaluate.batch_size == 16  # a whole block
    assert params.sample.seed == 13
    for read, key in (
        (lambda: params.train.lr, "train.lr"),
        (lambda: params.align.judge, "align.judge"),
        (lambda: params.generate, "generate"),
        (lambda: params.sample.fraction, "sample.fraction"),
    ):
        with pytest.raises(ConfigError, match=rf"stage 'probe' reads '{key}', which its params in dvc.yaml do not"):
            read()


def test_every_stage_of_the_pipeline_can_read_its_params():
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    for name in stages:
        params = stage_params(name, REPO / "params.yaml", REPO / "dvc.yaml")
        for key in declared_params(name, REPO / "dvc.yaml"):
            value = params
            for part in key.split("."):
                value = getattr(value, part)


def _run_stage(project, script: str, *args: str):
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    env.pop("ACCELERATE_MIXED_PRECISION", None)
    return subprocess.run(
        [sys.executable, str(REPO / "stages" / script), *args], cwd=project, env=env, capture_output=True, text=True
    )


def test_train_launch_cannot_reach_a_shell(tmp_path):
    (tmp_path / "dvc.yaml").write_text((REPO / "dvc.yaml").read_text())
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    witness = tmp_path / "pwned"
    params["train"]["launch"] = f"--cpu; touch {witness}; true"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    args = ["--triples", "t.jsonl", "--adapted", "a", "--output", "m", "--live", "l", "--checkpoints", "c"]
    args += ["--metrics", "x.json"]
    done = _run_stage(tmp_path, "train.py", *args)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "train.launch: '--cpu;' is not an accelerate option" in done.stderr
    assert not witness.exists()
    assert "${train.launch}" not in (REPO / "dvc.yaml").read_text()  # never pasted into a shell command


def test_accelerate_arguments_follow_the_train_params():
    from synthir.config import TrainParams
    from synthir.stage import accelerate_arguments

    base = {"base_model": "org/model"}
    cpu = accelerate_arguments(TrainParams(**base))
    assert cpu[:3] == ["--cpu", "--num_processes", "1"] and cpu[-2:] == ["--mixed_precision", "no"]
    gpu = accelerate_arguments(TrainParams(**base, device="cuda", launch="--gpu_ids 0"))
    assert "--cpu" not in gpu and "--multi_gpu" not in gpu
    assert gpu[-4:] == ["--mixed_precision", "bf16", "--gpu_ids", "0"]
    four = accelerate_arguments(TrainParams(**base, device="cuda", num_processes=4))
    assert four[:3] == ["--multi_gpu", "--num_processes", "4"]
    # several CPU processes: a torchrun launch whose processes join over gloo (Accelerator(cpu=True))
    assert accelerate_arguments(TrainParams(**base, num_processes=2))[:3] == ["--multi_gpu", "--num_processes", "2"]
