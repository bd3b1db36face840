import os
import subprocess
import sys

import pytest
import yaml

from synthir.config import load_params
from synthir.errors import ConfigError
from synthir.models import check_reference
from synthir.stage import declared_model_references, declared_params, stage_params
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


def test_a_stage_checks_the_model_references_it_declares_and_only_those(project):
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["sample"].update(model="./no/such/model")  # the probe declares sample.seed, not sample.model (yet)
    params["train"].update(base_model="./no/such/model")  # the probe never declares it
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    files = (project / "params.yaml", project / "dvc.yaml")
    assert stage_params("probe", *files, check_model=check_reference).sample.seed == 13
    dvc = yaml.safe_load((project / "dvc.yaml").read_text())
    dvc["stages"]["probe"]["params"].append("sample")
    (project / "dvc.yaml").write_text(yaml.safe_dump(dvc))
    assert stage_params("probe", *files).sample.model == "./no/such/model"  # unchecked without check_model
    with pytest.raises(ConfigError) as error:
        stage_params("probe", *files, check_model=check_reference)
    assert str(error.value) == f"{files[0]}: sample.model: './no/such/model': no such file or folder"


def test_every_stage_that_declares_a_model_reference_checks_it():
    """A stage that reads a model reference checks it before anything runs; a stage that reads none never
    imports the model code (tests/test_stage_deps.py pins which those are)."""
    params = load_params(REPO / "params.yaml")
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    for name in stages:
        declared = declared_model_references(params, declared_params(name, REPO / "dvc.yaml"))
        script = (REPO / "stages" / f"{name}.py").read_text()
        assert bool(declared) == (f'stage_params("{name}", check_model=check_reference)' in script), name


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


def _train(**settings):
    from synthir.config import TrainParams

    return TrainParams(base_model="org/model", **settings)


def test_two_launches_on_one_machine_get_different_free_ports_and_an_explicit_port_is_kept():
    """Bug: every run without a port used 29500, so a second run on the machine collided with the first."""
    import socket

    from synthir.stage import accelerate_arguments

    def port(arguments: list[str]) -> int:
        assert arguments.count("--main_process_port") == 1
        return int(arguments[arguments.index("--main_process_port") + 1])

    first = port(accelerate_arguments(_train(num_processes=2), {}))
    with socket.socket() as running:  # the first run holds its port while the second starts
        running.bind(("", first))
        running.listen()
        second = port(accelerate_arguments(_train(num_processes=2), {}))
        assert second != first
        with socket.socket() as probe:
            probe.bind(("", second))  # free
    assert port(accelerate_arguments(_train(num_processes=2, launch="--main_process_port 29511"), {})) == 29511
    assert port(accelerate_arguments(_train(num_processes=2), {"SYNTHIR_MAIN_PORT": "29512"})) == 29512
    assert "--main_process_port" not in accelerate_arguments(_train(), {})  # one process: no rendezvous
    with pytest.raises(ConfigError, match=r"^SYNTHIR_MAIN_PORT and train.launch's --main_process_port both set"):
        accelerate_arguments(_train(num_processes=2, launch="--main_process_port=29511"), {"SYNTHIR_MAIN_PORT": "1"})


def test_several_machines_take_rank_address_and_port_from_the_environment():
    from synthir.stage import accelerate_arguments

    environ = {"SYNTHIR_MACHINE_RANK": "1", "SYNTHIR_MAIN_ADDRESS": "node-0.cluster", "SYNTHIR_MAIN_PORT": "29600"}
    arguments = accelerate_arguments(_train(device="cuda", num_processes=8, num_machines=2), environ)
    assert arguments[:5] == ["--multi_gpu", "--num_processes", "8", "--num_machines", "2"]
    for option, value in (
        ("--machine_rank", "1"),
        ("--main_process_ip", "node-0.cluster"),
        ("--main_process_port", "29600"),
    ):
        assert arguments[arguments.index(option) + 1] == value
    default_port = accelerate_arguments(_train(num_processes=2, num_machines=2), {**environ, "SYNTHIR_MAIN_PORT": ""})
    assert default_port[default_port.index("--main_process_port") + 1] == "29500"  # the same on every machine
    # one process per machine is still a distributed launch
    assert accelerate_arguments(_train(num_processes=2, num_machines=2), environ)[0] == "--multi_gpu"


@pytest.mark.parametrize(
    ("machines", "environ", "message"),
    [
        (2, {"SYNTHIR_MACHINE_RANK": None}, "^SYNTHIR_MACHINE_RANK: not set; train.num_machines 2 needs"),
        (2, {"SYNTHIR_MAIN_ADDRESS": ""}, "^SYNTHIR_MAIN_ADDRESS: not set; train.num_machines 2 needs"),
        (
            2,
            {"SYNTHIR_MACHINE_RANK": "2"},
            r"^SYNTHIR_MACHINE_RANK: '2' is not a machine rank of train.num_machines 2 \(0 to 1\)$",
        ),
        (1, {"SYNTHIR_MACHINE_RANK": "1"}, "^SYNTHIR_MACHINE_RANK: '1' is not a machine rank of train.num_machines 1"),
        (2, {"SYNTHIR_MACHINE_RANK": "-1"}, "^SYNTHIR_MACHINE_RANK: '-1' is not a machine rank"),
        (2, {"SYNTHIR_MACHINE_RANK": "1.0"}, "^SYNTHIR_MACHINE_RANK: '1.0' is not a machine rank"),
        (2, {"SYNTHIR_MACHINE_RANK": " 1"}, "^SYNTHIR_MACHINE_RANK: ' 1' is not a machine rank"),
        (2, {"SYNTHIR_MACHINE_RANK": "\uff11"}, "^SYNTHIR_MACHINE_RANK: .* is not a machine rank"),  # a wide digit
        (2, {"SYNTHIR_MACHINE_RANK": "9" * 5000}, "^SYNTHIR_MACHINE_RANK: '9999.* is not a machine rank"),
        (2, {"SYNTHIR_MAIN_ADDRESS": "--cpu"}, "^SYNTHIR_MAIN_ADDRESS: '--cpu' is not a host name or IPv4 address"),
        (2, {"SYNTHIR_MAIN_ADDRESS": "host; id"}, "^SYNTHIR_MAIN_ADDRESS: 'host; id' is not a host name"),
        (2, {"SYNTHIR_MAIN_ADDRESS": "10.0.0.1\n"}, "^SYNTHIR_MAIN_ADDRESS: .* is not a host name"),
        (2, {"SYNTHIR_MAIN_ADDRESS": "a\x1b[2Jb"}, "^SYNTHIR_MAIN_ADDRESS: .* is not a host name"),
        (2, {"SYNTHIR_MAIN_ADDRESS": "../../etc"}, "^SYNTHIR_MAIN_ADDRESS: '../../etc' is not a host name"),
        (2, {"SYNTHIR_MAIN_ADDRESS": "h" * 300}, "^SYNTHIR_MAIN_ADDRESS: 'hhh.* is not a host name"),
        (2, {"SYNTHIR_MAIN_PORT": "0"}, r"^SYNTHIR_MAIN_PORT: '0' is not a TCP port \(1 to 65535\)$"),
        (2, {"SYNTHIR_MAIN_PORT": "65536"}, "^SYNTHIR_MAIN_PORT: '65536' is not a TCP port"),
        (2, {"SYNTHIR_MAIN_PORT": "-80"}, "^SYNTHIR_MAIN_PORT: '-80' is not a TCP port"),
        (2, {"SYNTHIR_MAIN_PORT": "1e3"}, "^SYNTHIR_MAIN_PORT: '1e3' is not a TCP port"),
        (1, {"SYNTHIR_MAIN_PORT": "9" * 5000}, "^SYNTHIR_MAIN_PORT: '9999.* is not a TCP port"),
    ],
)
def test_bad_machine_variables_are_one_line_naming_the_variable(machines, environ, message):
    from synthir.stage import accelerate_arguments

    """Each case changes one variable of a valid environment (None: unset; empty counts as unset)."""
    valid = {"SYNTHIR_MACHINE_RANK": "1", "SYNTHIR_MAIN_ADDRESS": "10.0.0.1"} if machines > 1 else {}
    given = {name: value for name, value in {**valid, **environ}.items() if value is not None}
    with pytest.raises(ConfigError, match=message) as error:
        accelerate_arguments(_train(num_processes=2, num_machines=machines), given)
    assert "\n" not in str(error.value)


def test_more_processes_than_gpus_is_refused_before_the_launch(monkeypatch):
    """Bug: num_processes above the GPUs present started the launch and failed inside every process."""
    import subprocess

    import torch

    from synthir.stage import check_gpu_count, relaunch_under_accelerate

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)  # a faked machine with two GPUs
    monkeypatch.setattr(subprocess, "call", lambda command: pytest.fail("launched"))
    with pytest.raises(
        ConfigError, match=r"^train.num_processes: 4 processes on this machine, one per GPU, but torch sees 2 GPU"
    ):
        relaunch_under_accelerate(_train(device="cuda", num_processes=4), "stages/train.py", [])
    with pytest.raises(ConfigError, match=r"^train.num_processes: 3 processes \(6 over train.num_machines 2\) on"):
        check_gpu_count(_train(device="cuda", num_processes=6, num_machines=2), 2)
    with pytest.raises(ConfigError, match=r"^train.device is cuda, but torch sees no GPU here"):
        check_gpu_count(_train(device="cuda"), 0)
    check_gpu_count(_train(device="cuda", num_processes=4, num_machines=2), 2)  # two per machine: fits
    check_gpu_count(_train(num_processes=4), 0)  # the CPU: processes, no GPUs
