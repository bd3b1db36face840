import json

import pytest
import torch
from sentence_transformers import SentenceTransformer

from synthir.config import TrainParams
from synthir.fileio import write_jsonl
from synthir.training.schedule import bucketed_batches
from synthir.training.tokenized import Encoded, TokenTable
from synthir.training.train import train


def test_pad_is_one_vectorised_copy():
    table = TokenTable([torch.tensor([5, 6, 7]).numpy(), torch.tensor([8]).numpy()], pad_id=0)
    batch = table.pad([1, 0], "cpu")
    assert batch["input_ids"].tolist() == [[8, 0, 0], [5, 6, 7]]
    assert batch["attention_mask"].tolist() == [[1, 0, 0], [1, 1, 1]]


def test_batches_cover_every_example_once_and_never_repeat_a_query_or_positive():
    import numpy as np

    keys = [(f"query:q{i % 11}", f"positive:doc{i % 7}") for i in range(70)]  # ten examples share each positive
    table = TokenTable([np.arange(1 + i % 5) for i in range(70)], 0)
    data = Encoded(list(range(70)), [[i] for i in range(70)], [[] for _ in range(70)], keys)
    batches = bucketed_batches(data, table, batch_size=7, seed=1, bucket=2)
    assert sorted(i for b in batches for i in b) == list(range(70))  # nothing dropped, nothing twice
    assert sum(len(b) == 7 for b in batches) >= 8  # full batches first; only the leftovers form smaller ones
    for batch in batches:
        assert all(len({keys[i][part] for i in batch}) == len(batch) for part in (0, 1))


@pytest.fixture
def triples(tmp_path):
    rows = [
        {
            "query_id": f"q{i}",
            "query": f"question about topic {i}",
            "positive_ids": [f"d{i}", "synthetic"],
            "positives": [f"topic {i} is explained here in some detail", f"synthetic passage {i}"],
            "negatives": [f"unrelated passage {i}"],
            "source": "train",
        }
        for i in range(12)
    ]
    path = tmp_path / "train.jsonl"
    write_jsonl(path, rows)
    return path


@pytest.mark.parametrize("loss", ["mnrl", "snn"])
def test_train_saves_a_loadable_model_with_card_and_logs(tmp_path, tiny_encoder, triples, loss):
    from synthir.training.model_card import read_card

    params = TrainParams(base_model=tiny_encoder, loss=loss, batch_size=4, epochs=2, lr=1e-3)
    summary = train(params, triples, tmp_path / "model", tmp_path / "live", tmp_path / "ckpt")
    assert summary["steps"] == 6
    model = SentenceTransformer(str(tmp_path / "model"), device="cpu")
    base = SentenceTransformer(tiny_encoder, device="cpu")
    assert model.encode(["hello"]).shape == (1, 32)
    trained, original = model.state_dict(), base.state_dict()
    assert trained.keys() == original.keys()
    moved = [name for name in trained if not torch.allclose(trained[name], original[name], atol=1e-6)]
    assert len(moved) >= len(trained) // 2, "training must update the encoder's weights"
    logged = json.loads((tmp_path / "live" / "metrics.json").read_text())
    assert logged["step"] == 5 and logged["train"]["lr"] == 0.0  # the linear schedule has decayed to zero
    assert 0 < logged["train"]["loss"] < 10  # finite, and no NaN
    metadata, body = read_card(tmp_path / "model")
    assert "base_model" not in metadata  # a local base folder without a card: named by no path
    assert {"synthir", "dense-retrieval", f"loss:{loss}"} <= set(metadata["tags"])
    assert f"* Loss: <code>synthir.training.losses.{loss}</code>" in body and "* Size: 12 training samples" in body
    assert "the corpus: labeled and synthetic queries (train: 12)" in body
    hyperparameters = ["`lr`: 0.001", "`batch_size`: 4", "`epochs`: 2", "`base_model`: (a local model)"]
    assert all(f"- {line}\n" in body for line in [*hyperparameters, f"`loss`: {loss}", "`tau`: 0.05"])
    card = (tmp_path / "model" / "README.md").read_text()
    assert str(tmp_path) not in card and tiny_encoder not in card


@pytest.fixture
def taught_triples(tmp_path):
    """Examples with two negatives each and the teacher's scores of the first positive and both negatives."""
    rows = [
        {
            "query_id": f"q{i}",
            "query": f"question about topic {i}",
            "positive_ids": [f"d{i}"],
            "positives": [f"topic {i} is explained here in some detail"],
            "negative_ids": [f"n{i}", f"m{i}"],
            "negatives": [f"a passage on topic {i + 1}", f"unrelated passage {i}"],
            "teacher": {"method": "hybrid", "positive": 0.9, "negatives": [0.6, 0.2 + 0.01 * i]},
            "source": "train",
        }
        for i in range(12)
    ]
    path = tmp_path / "taught.jsonl"
    write_jsonl(path, rows)
    return path


@pytest.mark.parametrize("contrastive_weight", [0.0, 0.5])
def test_listwise_distillation_trains_end_to_end_and_needs_the_teachers_scores(
    tmp_path, tiny_encoder, taught_triples, contrastive_weight
):
    from synthir.errors import ConfigError
    from synthir.fileio import read_jsonl
    from synthir.training.model_card import read_card

    params = TrainParams(
        base_model=tiny_encoder, loss="listwise", num_negatives=2, batch_size=4, lr=1e-3, log_every=1,
        teacher_temperature=0.1, contrastive_weight=contrastive_weight,
    )  # fmt: skip
    summary = train(params, taught_triples, tmp_path / "model", tmp_path / "live", tmp_path / "ckpt")
    assert summary["steps"] == 3 and 0 < summary["final_loss"] < 10
    trained = SentenceTransformer(str(tmp_path / "model"), device="cpu").state_dict()
    base = SentenceTransformer(tiny_encoder, device="cpu").state_dict()
    assert sum(not torch.allclose(trained[k], base[k], atol=1e-6) for k in base) >= len(base) // 2
    metadata, body = read_card(tmp_path / "model")
    assert "loss:listwise" in metadata["tags"] and '"teacher_temperature": 0.1' in body
    assert ('"contrastive_weight": 0.5' in body) == bool(contrastive_weight)
    rows = list(read_jsonl(taught_triples))
    del rows[5]["teacher"]
    write_jsonl(taught_triples, rows)
    with pytest.raises(ConfigError, match=r"example 6 \(q5\) has no teacher score .*train.loss listwise distils"):
        train(params, taught_triples, tmp_path / "m2", tmp_path / "l2", tmp_path / "c2")


def test_a_trained_model_is_publishable_its_card_has_metadata_and_encode_query_applies_the_prefix(
    tmp_path, tiny_encoder, triples
):
    from synthir.training.model_card import read_card

    base = tmp_path / "base"
    SentenceTransformer(tiny_encoder, device="cpu").save(str(base))
    (base / "README.md").write_text("---\nbase_model: org/tiny-bert\nlanguage: en\nlicense: mit\n---\n# tiny\n")
    params = TrainParams(base_model=str(base), query_prefix="query: ", passage_prefix="passage: ", batch_size=4)
    train(params, triples, tmp_path / "model", tmp_path / "live", tmp_path / "ckpt", dataset="scifact")
    model = SentenceTransformer(str(tmp_path / "model"), device="cpu")
    assert model.prompts == {"query": "query: ", "document": "passage: "}
    text = "why do cats purr"
    assert (model.encode_query([text]) == model.encode(["query: " + text])).all()
    assert (model.encode_document([text]) == model.encode(["passage: " + text])).all()
    assert not (model.encode_query([text]) == model.encode([text])).all()
    metadata, body = read_card(tmp_path / "model")
    assert metadata["library_name"] == "sentence-transformers" and metadata["pipeline_tag"] == "sentence-similarity"
    assert metadata["base_model"] == "org/tiny-bert"  # named by the base folder's own card, never by its path
    assert metadata["language"] in ("en", ["en"]) and metadata["license"] == "mit" and "synthir" in metadata["tags"]
    assert "scifact: labeled and synthetic queries (train: 12)" in body
    assert "`loss`: mnrl" in body and "`batch_size`: 4" in body  # the hyperparameters
    assert "SentenceTransformer(" in body and "encode_query(" in body  # sentence-transformers' usage snippet
    card = (tmp_path / "model" / "README.md").read_text()
    assert str(tmp_path) not in card and "/tmp" not in card


KILLED_AT_STEP = """
import json, os, signal, sys
from pathlib import Path

import torch

import synthir.training.train as training
from synthir.config import FitParams

params, triples, folder, kill_at = json.loads(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4])
torch.set_num_threads(int(sys.argv[5]))  # as the test's process: the same float reductions, bit for bit
step_once = training.train_step
steps = 0


def step_then_die(run, batch):
    global steps
    steps += 1
    if steps == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no finally: as when the machine dies
    return step_once(run, batch)


training.train_step = step_then_die
training.train(FitParams(**params), triples, folder / "model", folder / "live", folder / "ckpt")
"""


def test_a_killed_run_resumes_from_its_checkpoint_to_the_same_weights(tmp_path, tiny_encoder, triples):
    import subprocess
    import sys

    from safetensors.torch import load_file

    settings = {"base_model": tiny_encoder, "batch_size": 4, "epochs": 2, "lr": 1e-3, "checkpoint_steps": 2}
    settings["log_every"] = 1  # step 5 is logged before the kill: the resumed run must rewind it
    params = TrainParams(**settings)  # dropout on: the checkpoint must restore the random state too
    whole = train(params, triples, tmp_path / "whole", tmp_path / "live-whole", tmp_path / "ckpt-whole")
    assert whole["steps"] == 6 and whole["resumed_from_step"] == 0
    killed = tmp_path / "killed"
    threads = str(torch.get_num_threads())
    script = [sys.executable, "-c", KILLED_AT_STEP, json.dumps(settings), str(triples), str(killed), "6", threads]
    done = subprocess.run(script, capture_output=True, text=True, timeout=300)
    assert done.returncode == -9, done.stderr[-2000:]  # killed during step 6: steps 1-5 logged, step 4 saved
    assert not (killed / "model").exists()
    [state] = (killed / "ckpt").iterdir()
    assert [p.name for p in state.iterdir()] == ["step-4"]  # only the last checkpoint is kept, none partial
    resumed = train(params, triples, killed / "model", killed / "live", killed / "ckpt")
    assert resumed["resumed_from_step"] == 4
    ours, reference = (
        load_file(killed / "model" / "model.safetensors"),
        load_file(tmp_path / "whole" / "model.safetensors"),
    )
    for name in reference:
        torch.testing.assert_close(ours[name], reference[name], atol=1e-6, rtol=0, msg=name)
    curve = lambda folder: (folder / "plots" / "metrics" / "train" / "loss.tsv").read_text()  # noqa: E731
    assert curve(killed / "live") == curve(tmp_path / "live-whole")  # step 5, logged before the kill, once


def test_a_checkpoint_is_resumed_only_by_a_run_from_the_same_starting_weights(tmp_path, triples):
    """The adapt stage rewrites models/adapted in place: a run starting from the new weights under the same
    base_model must not resume the old run's checkpoint."""
    from tests.conftest import build_tiny_encoder

    base = build_tiny_encoder(tmp_path / "base")
    params = TrainParams(base_model=base, batch_size=4, epochs=1, checkpoint_steps=1)
    assert train(params, triples, tmp_path / "m1", tmp_path / "l1", tmp_path / "ckpt")["resumed_from_step"] == 0
    build_tiny_encoder(tmp_path / "base", initializer_range=0.05)  # other weights, the same folder
    again = train(params, triples, tmp_path / "m2", tmp_path / "l2", tmp_path / "ckpt")
    assert again["resumed_from_step"] == 0 and again["steps"] == 3


def test_a_run_that_did_not_happen_has_empty_curves_of_the_same_names(tmp_path, tiny_encoder, triples):
    from synthir.training.curves import write_empty_curves

    params = TrainParams(base_model=tiny_encoder, batch_size=4, max_steps=1)
    train(params, triples, tmp_path / "model", tmp_path / "ran", tmp_path / "ckpt")
    write_empty_curves(tmp_path / "off")
    ran = sorted(p.relative_to(tmp_path / "ran") for p in (tmp_path / "ran" / "plots").rglob("*.tsv"))
    off = sorted(p.relative_to(tmp_path / "off") for p in (tmp_path / "off" / "plots").rglob("*.tsv"))
    assert ran == off and len(off) == 2
    for path in off:
        header = (tmp_path / "off" / path).read_text()
        assert header == (tmp_path / "ran" / path).read_text().splitlines(keepends=True)[0]


def _example(query_id: str, gold: str, negative_ids: list[str], positives: int = 1) -> dict:
    return {
        "query_id": query_id,
        "query": f"query {query_id}",
        "positive_ids": [gold] + ["synthetic"] * (positives - 1),
        "positives": [f"gold {gold}"] + [f"synthetic positive {i} of {query_id}" for i in range(positives - 1)],
        "negative_ids": negative_ids,
        "negatives": [f"{kind} negative of {query_id}" for kind in negative_ids],
        "source": "syntriever",
    }


def test_every_syntriever_negative_reaches_the_loss_and_num_negatives_bounds_the_mined_ones():
    """Bug: negatives[:num_negatives] cut the relabeled hallucination (Syntriever's point) and mined negatives."""
    from synthir.training.tokenized import encode_examples
    from tests.conftest import minilm_tokenizer

    examples = [_example("q1", "d1", ["synthetic", "relabeled", "d7", "d8"], positives=3)]
    _, data = encode_examples(examples, minilm_tokenizer(), 64, "", "", True, 1)
    assert len(data.negatives[0]) == 3  # synthetic + relabeled + one mined (num_negatives: 1)
    assert data.negative_kinds[0] == ["synthetic", "relabeled", "mined"]
    assert data.positive_kinds[0] == ["document", "synthetic", "synthetic"]


def test_alignment_trains_on_every_judged_pair_once_per_epoch():
    """Bug: with max_queries equal to the batch size, batches of distinct queries dropped most pairs."""
    from synthir.align.preferences import preference_examples
    from synthir.training.schedule import bucketed_batches
    from synthir.training.tokenized import encode_examples
    from tests.conftest import minilm_tokenizer

    rng = __import__("random").Random(0)
    corpus = {f"d{i}": {"title": "", "text": f"passage {i}"} for i in range(200)}
    prefs = []
    for q in range(32):  # 32 queries with 1-10 pairs each: 174 pairs
        for _ in range(1 + (q * 7) % 10):
            a, b = rng.sample(range(200), 2)
            prefs.append(
                {"query_id": f"q{q}", "query": f"query {q}", "preferred": f"d{a}", "rejected": f"d{b}", "margin": 1.0}
                | {"preferred_rank": 1, "rejected_rank": 2}
            )
    examples = preference_examples(prefs, corpus)
    text_corpus, data = encode_examples(examples, minilm_tokenizer(), 32, "", "", True, 1)
    batches = bucketed_batches(data, text_corpus, batch_size=32, seed=13)
    trained = sorted(i for batch in batches for i in batch)
    assert trained == list(range(len(examples))), f"{len(examples) - len(set(trained))} pairs never trained"
    for batch in batches:  # partial Plackett-Luce needs one pair per query in a batch
        assert len({examples[i]["query_id"] for i in batch}) == len(batch)


def test_triples_left_empty_are_one_error_naming_the_file_before_any_model_loads(tmp_path):
    from synthir.errors import DataError

    empty = tmp_path / "train.jsonl"
    empty.write_text("\n")
    (tmp_path / "never-loaded").mkdir()  # no model in it: loading it would fail otherwise
    params = TrainParams(base_model=str(tmp_path / "never-loaded"), batch_size=4)
    with pytest.raises(
        DataError,
        match=rf"^{empty}: no training examples; make more: raise sample.fraction, loosen the verify filters or "
        r"add triples.sources$",
    ):
        train(params, empty, tmp_path / "model", tmp_path / "live", tmp_path / "ckpt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["never-loaded", "train.jsonl"]


def test_pad_pins_and_copies_without_blocking_only_on_cuda(faked_cuda_copies):
    table = TokenTable([torch.tensor([5, 6, 7]).numpy(), torch.tensor([8]).numpy()], pad_id=0)
    table.pad([1, 0], "cpu")
    assert faked_cuda_copies.calls == [("to", "cpu", False)] * 2  # the CPU: no pinned memory
    faked_cuda_copies.calls.clear()
    table.pad([1, 0], torch.device("cuda"))
    assert faked_cuda_copies.calls == [("pin",), ("to", "cuda", True)] * 2  # input ids, then the mask


def test_the_curve_logs_each_windows_mean_loss_every_log_every_steps_and_at_checkpoints(
    tmp_path, tiny_encoder, triples, monkeypatch
):
    """Bug: every step read its loss (a device sync) and wrote DVCLive. Now a window's losses are summed on the
    device and its mean logged at its last step: every log_every steps, at each checkpoint, after the last."""
    import synthir.training.train as training

    losses = []
    step_once = training.train_step

    def recorded(run, batch):  # a spy: reads each step's loss, which the loop no longer does
        loss = step_once(run, batch)
        losses.append(float(loss))
        return loss

    monkeypatch.setattr(training, "train_step", recorded)
    params = TrainParams(base_model=tiny_encoder, batch_size=4, epochs=2, lr=1e-3, log_every=4, checkpoint_steps=3)
    summary = train(params, triples, tmp_path / "model", tmp_path / "live", tmp_path / "ckpt")
    assert len(losses) == summary["steps"] == 6
    curves = tmp_path / "live" / "plots" / "metrics" / "train"
    logged = [row.split("\t") for row in (curves / "loss.tsv").read_text().splitlines()[1:]]
    # windows: steps 1-3 (the checkpoint at 3), step 4 (log_every), steps 5-6 (the last); logged at their last
    # step, counted from 0 as DVCLive counts
    expected = [(2, sum(losses[0:3]) / 3), (3, losses[3]), (5, sum(losses[4:6]) / 2)]
    assert [int(step) for step, _ in logged] == [step for step, _ in expected]
    assert [float(value) for _, value in logged] == pytest.approx([mean for _, mean in expected], rel=1e-6)
    assert [row.split("\t")[0] for row in (curves / "lr.tsv").read_text().splitlines()[1:]] == ["2", "3", "5"]
    assert summary["final_loss"] == round(sum(losses) / 6, 5)  # the mean of the last 20 steps (here all 6)


def test_final_loss_is_the_mean_of_the_last_twenty_steps():
    from synthir.training.curves import FINAL_LOSS_STEPS, LossWindow

    window = LossWindow()
    for value in range(25):
        window.add(torch.tensor(float(value)))
    assert window.mean() == 12.0  # the window: all 25 steps
    assert FINAL_LOSS_STEPS == 20 and window.final_loss() == sum(range(5, 25)) / 20
    assert LossWindow().final_loss() is None


def test_gradient_checkpointing_is_the_non_reentrant_kind(tmp_path, tiny_encoder, triples, monkeypatch):
    """Bug: the reentrant kind (transformers 4's default) fails under DDP; synthir asks for use_reentrant=False."""
    from transformers import PreTrainedModel

    from synthir.training.builders import setup
    from synthir.training.train import backward

    asked = []
    enable = PreTrainedModel.gradient_checkpointing_enable

    def spy(model, *args, **kwargs):
        asked.append((args, kwargs))
        return enable(model, *args, **kwargs)

    monkeypatch.setattr(PreTrainedModel, "gradient_checkpointing_enable", spy)
    run = setup(TrainParams(base_model=tiny_encoder, batch_size=4, gradient_checkpointing=True), triples, tmp_path)
    assert asked == [((), {"gradient_checkpointing_kwargs": {"use_reentrant": False}})]
    backward(run, run.schedule[0])  # a step through the checkpointed layers still reaches every layer
    assert all(p.grad is not None for p in run.model.parameters() if p.requires_grad)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({"log_every": 0}, "train.log_every: Input should be greater than 0"),
        ({"log_every": -5}, "train.log_every: Input should be greater than 0"),
        ({"log_every": 10**9}, "train.log_every: Input should be less than or equal to"),
        ({"log_every": 2.5}, "train.log_every: Input should be a valid integer"),
        ({"log_every": "10"}, "train.log_every: Input should be a valid integer"),
        ({"log_every": float("nan")}, "train.log_every: Input should be a valid integer"),
        ({"num_machines": 0}, "train.num_machines: Input should be greater than 0"),
        ({"num_machines": 10**6}, "train.num_machines: Input should be less than or equal to 1024"),
        ({"num_machines": "2"}, "train.num_machines: Input should be a valid integer"),
        ({"num_machines": True}, "train.num_machines: Input should be a valid integer"),
        ({"num_processes": 3, "num_machines": 2}, "train: num_processes 3 does not split evenly over num_machines 2"),
        ({"launch": "--machine_rank 1"}, "train.launch: '--machine_rank' is set by .*machine rank and address by"),
        ({"launch": "--main_process_ip=10.0.0.1"}, "train.launch: '--main_process_ip=10.0.0.1' is set by"),
        ({"launch": "--main_process_port abc"}, "train.launch: --main_process_port: 'abc' is not a TCP port"),
        ({"launch": "--main_process_port=70000"}, "train.launch: --main_process_port: '70000' is not a TCP port"),
        ({"launch": "--main_process_port 0"}, "train.launch: --main_process_port: '0' is not a TCP port"),
        ({"launch": "--main_process_port"}, "train.launch: --main_process_port: '' is not a TCP port"),
    ],
)
def test_bad_logging_and_machine_params_name_the_key(edit, message):
    import yaml

    from synthir.config import parse_params
    from synthir.errors import ConfigError
    from tests.conftest import REPO

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["train"].update(edit)
    with pytest.raises(ConfigError, match=message):
        parse_params(params)


def test_processes_that_disagree_on_the_run_or_its_checkpoint_stop_with_one_line(monkeypatch):
    """Machines read their own triples, params and checkpoints: a difference would train mismatched batches."""
    import accelerate.utils

    from synthir.errors import ConfigError
    from synthir.training.distributed import agreed

    class TwoProcesses:  # a test double: what `agreed` reads of a 2-process run's accelerator
        num_processes = 2

    monkeypatch.setattr(accelerate.utils, "gather_object", lambda values: ["step-4", "no checkpoint"])
    with pytest.raises(ConfigError, match=r"^train: process 1 resumes elsewhere \('no checkpoint' against 'step-4'\)$"):
        agreed(TwoProcesses(), "step-4", "resumes elsewhere")
    monkeypatch.setattr(accelerate.utils, "gather_object", lambda values: values * 2)
    assert agreed(TwoProcesses(), "4f2a", "differs") == "4f2a"


def test_the_train_stage_starts_from_the_adapted_encoder_only_when_adapt_is_on(tmp_path, tiny_encoder, monkeypatch):
    """The stage's one call: the run's settings (base_model swapped for the adapt stage's folder when adapt is
    on), and the summary written as the metrics."""
    from types import SimpleNamespace

    import synthir.training.train as training

    runs = []

    def recorded(params, triples, output, live_dir, checkpoints, dataset=None):  # a spy: no training
        runs.append((params.base_model, dataset))
        return {"steps": 1}

    monkeypatch.setattr(training, "train", recorded)
    adapted, paths = tmp_path / "adapted", [tmp_path / name for name in ("model", "live", "ckpt")]
    for method in ("tsdae", "none"):
        params = SimpleNamespace(
            train=TrainParams(base_model=tiny_encoder),
            adapt=SimpleNamespace(method=method),
            dataset=SimpleNamespace(name="scifact"),
        )
        metrics = tmp_path / f"{method}.json"
        assert training.train_stage(params, tmp_path / "train.jsonl", adapted, *paths, metrics) == {"steps": 1}
        assert json.loads(metrics.read_text()) == {"steps": 1}
    assert runs == [(str(adapted), "scifact"), (tiny_encoder, "scifact")]


def test_align_train_off_writes_a_note_empty_curves_and_metrics_without_accelerate(tmp_path):
    from tests.conftest import run_stage

    arguments = ["--model", "retriever", "--preferences", "preferences.jsonl", "--output", "aligned"]
    arguments += ["--live", "live", "--checkpoints", "ckpt", "--metrics", "align.json"]
    done = run_stage("align_train", tmp_path, arguments, {"align": {"enabled": False}})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout == ""  # no run summary: nothing trained
    assert [p.name for p in (tmp_path / "aligned").iterdir()] == ["README.md"]
    assert "Alignment is off (align.enabled: false)" in (tmp_path / "aligned" / "README.md").read_text()
    assert json.loads((tmp_path / "align.json").read_text()) == {"enabled": False}
    curves = tmp_path / "live" / "plots" / "metrics" / "train"
    assert sorted(p.name for p in curves.iterdir()) == ["loss.tsv", "lr.tsv"]
    assert (curves / "loss.tsv").read_text() == "step\tloss\n" and not (tmp_path / "ckpt").exists()
