"""Evaluation at scale: corpus embeddings on the host (or a memory map), exact search in chunks with a stated
device memory, and corpus encoding spread over processes with the bits of one."""

import weakref

import numpy as np
import pytest
import torch
import yaml
from torch.utils._python_dispatch import TorchDispatchMode

from synthir import retrieval
from synthir.config import EvaluateParams, parse_params
from synthir.errors import ConfigError, DataError
from synthir.retrieval import (
    doc_chunk_for_budget,
    encode,
    encode_corpus,
    encode_passages,
    encoding_devices,
    search_device_bytes,
    top_k,
)
from tests.conftest import REPO


def reference_top_k(queries: torch.Tensor, docs: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 brute force; ties to the lower corpus index (a stable sort)."""
    scores = queries.double() @ docs.double().T
    values, index = scores.sort(dim=1, descending=True, stable=True)
    return values[:, :k].float(), index[:, :k]


CHUNKS = [(1, 1), (3, 2), (7, 4), (10, 9), (64, 100), (1000, 4096)]


@pytest.mark.parametrize(("doc_chunk", "query_chunk"), CHUNKS)
@pytest.mark.parametrize("k", [1, 10, 50, 103, 200])
def test_ties_go_to_the_lower_index_whatever_the_chunk_sizes(doc_chunk, query_chunk, k):
    """Small-integer embeddings: scores are exact, and most of them tie (the old search picked among ties as
    torch.topk happened to, differently per chunk size, and failed when a chunk held fewer than k documents)."""
    generator = torch.Generator().manual_seed(0)
    docs = torch.randint(0, 3, (103, 4), generator=generator).float()
    docs[40:60] = 1.0  # a run of identical documents
    queries = torch.cat([torch.randint(0, 3, (8, 4), generator=generator).float(), torch.ones(1, 4)])
    scores, index = top_k(queries, docs, k, doc_chunk=doc_chunk, query_chunk=query_chunk)
    expected_scores, expected_index = reference_top_k(queries, docs, k)
    assert torch.equal(index, expected_index) and torch.equal(scores, expected_scores)


@pytest.mark.parametrize(("doc_chunk", "query_chunk"), CHUNKS)
def test_chunked_search_equals_the_one_chunk_search_on_random_embeddings(doc_chunk, query_chunk):
    generator = torch.Generator().manual_seed(1)
    docs = torch.nn.functional.normalize(torch.randn(250, 16, generator=generator), dim=1)
    queries = torch.nn.functional.normalize(torch.randn(11, 16, generator=generator), dim=1)
    scores, index = top_k(queries, docs, 101, doc_chunk=doc_chunk, query_chunk=query_chunk)
    whole_scores, whole_index = top_k(queries, docs, 101, doc_chunk=250, query_chunk=11)
    expected_scores, expected_index = reference_top_k(queries, docs, 101)
    assert torch.equal(index, whole_index) and torch.equal(index, expected_index)
    assert torch.allclose(scores, whole_scores, atol=1e-6) and torch.allclose(scores, expected_scores, atol=1e-6)
    plain_scores, plain_index = torch.topk(queries @ docs.T, 101, dim=1)  # no ties here: the old search's result
    assert torch.equal(whole_index, plain_index) and torch.equal(whole_scores, plain_scores)


def test_search_reads_a_memory_mapped_corpus(tmp_path):
    generator = torch.Generator().manual_seed(2)
    docs, queries = torch.randn(90, 8, generator=generator), torch.randn(5, 8, generator=generator)
    np.save(tmp_path / "docs.npy", docs.numpy())
    mapped = torch.from_numpy(np.load(tmp_path / "docs.npy", mmap_mode="c"))
    (scores, index), (expected_scores, expected_index) = top_k(queries, mapped, 20, 16), top_k(queries, docs, 20, 16)
    assert torch.equal(index, expected_index) and torch.equal(scores, expected_scores)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_non_finite_embedding_is_refused_by_its_row(bad):
    docs, queries = torch.ones(30, 4), torch.ones(2, 4)
    docs[17, 2] = bad
    with pytest.raises(DataError, match=r"document embedding 17 is not finite \(NaN or inf\)"):
        top_k(queries, docs, 5, doc_chunk=8)
    queries[1, 0] = bad
    with pytest.raises(DataError, match="query embedding 1 is not finite"):
        top_k(queries, torch.ones(30, 4), 5)


@pytest.mark.parametrize(("doc_chunk", "query_chunk"), [(0, 4), (4, 0), (-1, 4)])
def test_a_chunk_size_below_one_is_refused(doc_chunk, query_chunk):
    with pytest.raises(ValueError, match="chunk sizes must be positive"):
        top_k(torch.ones(2, 4), torch.ones(9, 4), 3, doc_chunk, query_chunk)


def test_an_empty_corpus_or_query_set_gives_empty_results():
    assert [tuple(t.shape) for t in top_k(torch.ones(2, 4), torch.ones(0, 4), 5)] == [(2, 0), (2, 0)]
    assert [tuple(t.shape) for t in top_k(torch.ones(0, 4), torch.ones(9, 4), 5)] == [(0, 0), (0, 0)]


class LiveBytes(TorchDispatchMode):
    """Counts the bytes of the storages that ops allocate while they are alive, and keeps the peak (the CPU's
    stand-in for torch.cuda.max_memory_allocated)."""

    def __init__(self, *inputs: torch.Tensor) -> None:
        super().__init__()
        self.inputs = {tensor.untyped_storage().data_ptr() for tensor in inputs}  # views of them allocate nothing
        self.refs: dict[int, int] = {}
        self.sizes: dict[int, int] = {}
        self.live = self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(tensor, torch.Tensor):
                self._track(tensor)
        return out

    def _track(self, tensor: torch.Tensor) -> None:
        key = tensor.untyped_storage().data_ptr()
        if key in self.inputs:
            return
        if key not in self.refs:
            self.refs[key], self.sizes[key] = 0, tensor.untyped_storage().nbytes()
            self.live += self.sizes[key]
            self.peak = max(self.peak, self.live)
        self.refs[key] += 1
        weakref.finalize(tensor, self._release, key)

    def _release(self, key: int) -> None:
        self.refs[key] -= 1
        if not self.refs[key]:
            self.live -= self.sizes.pop(key)
            del self.refs[key]


@pytest.mark.parametrize(
    ("queries", "docs", "doc_chunk", "query_chunk"), [(300, 5000, 1024, 128), (64, 3000, 3000, 64), (50, 900, 4096, 8)]
)
def test_the_stated_search_bytes_bound_the_measured_peak(queries, docs, doc_chunk, query_chunk):
    dim, k = 32, 101
    generator = torch.Generator().manual_seed(3)
    query_emb, doc_emb = torch.randn(queries, dim, generator=generator), torch.randn(docs, dim, generator=generator)
    with LiveBytes(query_emb, doc_emb) as meter:
        top_k(query_emb, doc_emb, k, doc_chunk, query_chunk)
    stated = search_device_bytes(queries, dim, k, docs, doc_chunk, query_chunk)
    inputs = queries * dim * 4 + min(doc_chunk, docs) * dim * 4  # in place on the CPU: the chunk is a view there
    score_block = min(query_chunk, queries) * min(doc_chunk, docs) * 4
    assert score_block < meter.peak <= stated - inputs


def test_search_bytes_per_hundred_thousand_documents_by_hand():
    """docs/scaling.md's figures: 10,000 queries, depth 100 (k = 101), the default chunk; the corpus size drops out."""
    for dim in (384, 768):
        queries, chunk, block = 10_000 * dim * 4, 65_536 * dim * 5, 4096 * 65_536 * 4
        rest = 4096 * 102 * 12 + 4096 * 101 * 40 + 10_000 * 101 * 12 + 4096 * 202 * 24 + 4096 * 101 * 8
        expected = queries + chunk + block + rest
        assert search_device_bytes(10_000, dim, 101, 100_000) == expected
        assert search_device_bytes(10_000, dim, 101, 5_000_000) == expected
    assert search_device_bytes(10_000, 768, 101, 100_000) < 1.5 * 2**30  # far below a 24 GB card


def test_a_chunk_size_chosen_from_a_memory_budget_fits_it_and_one_more_document_does_not():
    budget = 256 * 2**20
    chunk = doc_chunk_for_budget(budget, 10_000, 768, 101, 5_000_000)
    assert search_device_bytes(10_000, 768, 101, 5_000_000, chunk) <= budget
    assert search_device_bytes(10_000, 768, 101, 5_000_000, chunk + 1) > budget
    assert doc_chunk_for_budget(2**40, 10, 8, 5, 1000) == 1000  # a small corpus fits whole
    with pytest.raises(ConfigError, match="a search memory budget of 1,000 bytes cannot hold 10,000 queries"):
        doc_chunk_for_budget(1000, 10_000, 768, 101, 100)


# Texts whose lengths tie (encode's unstable sort may order them either way) and whose tokens differ.
TEXTS = [
    "cats purr",
    "dogs bark",
    "a b c d e",
    "supercalif",
    "x",
    "y",
    "the quick brown fox jumps over the lazy dog",
    "the lazy dog sleeps under the quick brown fox",
    "zz",
    "qq",
    "",
    "retrieval",
    "embedding",
] * 3


@pytest.fixture(scope="module")
def tiny_model(tiny_encoder):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(tiny_encoder, device="cpu")


def recorded_batches(model, monkeypatch, run) -> list[list[str]]:
    """The batches `run` sends through the model's preprocess, rows in the order encoded."""
    batches = []
    original = type(model).preprocess

    def spy(self, inputs, *args, **kwargs):
        batches.append(list(inputs))
        return original(self, inputs, *args, **kwargs)

    monkeypatch.setattr(type(model), "preprocess", spy)
    run()
    monkeypatch.undo()
    return batches


@pytest.mark.parametrize("batch_size", [1, 4, 5, 64])
def test_corpus_encoding_runs_the_one_call_batches_with_its_bits(tiny_model, monkeypatch, batch_size):
    """Batch by batch to host memory, yet the same batches, rows in the same order, as one `encode` call over
    the corpus (the previous path, whose bits the committed scores come from)."""
    new = recorded_batches(tiny_model, monkeypatch, lambda: encode_corpus(tiny_model, TEXTS, batch_size, "p: "))
    old = recorded_batches(tiny_model, monkeypatch, lambda: encode(tiny_model, TEXTS, batch_size, "p: "))
    assert new == old
    embeddings = torch.from_numpy(encode_corpus(tiny_model, TEXTS, batch_size, "p: "))
    assert torch.equal(embeddings, encode(tiny_model, TEXTS, batch_size, "p: "))


def test_two_processes_encode_the_bits_of_one_in_the_same_order(tiny_model):
    one = encode_corpus(tiny_model, TEXTS, 4)
    two = encode_corpus(tiny_model, TEXTS, 4, devices=["cpu", "cpu"])
    assert np.array_equal(one, two) and tiny_model.device.type == "cpu"
    assert np.array_equal(one, encode(tiny_model, TEXTS, 4).numpy())


def test_a_cached_corpus_is_a_memory_map_and_a_failed_encoding_leaves_no_file(tmp_path, monkeypatch, tiny_model):
    monkeypatch.setenv("SYNTHIR_CACHE_DIR", str(tmp_path))
    first = encode_passages(tiny_model, TEXTS, 4)
    (cached,) = (tmp_path / "embeddings").glob("*.npy")
    assert torch.equal(first, encode(tiny_model, TEXTS, 4)) and isinstance(np.load(cached, mmap_mode="r"), np.memmap)
    assert torch.equal(torch.from_numpy(np.load(cached)), first)
    cached.unlink()
    calls = []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("out of memory")
        return original(*args, **kwargs)

    original = tiny_model.encode
    monkeypatch.setattr(tiny_model, "encode", failing)
    with pytest.raises(RuntimeError, match="out of memory"):
        encode_passages(tiny_model, TEXTS, 4)
    assert list((tmp_path / "embeddings").iterdir()) == []  # neither a half-written cache nor its temporary file


def test_dense_evaluation_is_the_same_on_two_processes_and_tiny_search_chunks(tiny_encoder, beir_dir):
    """Two processes give the same run; a 1-document search chunk the same ranking, its scores to float precision
    (a matrix product of another shape may round a score's last bit otherwise)."""
    from synthir.evaluation.evaluate import evaluate_dense

    default = evaluate_dense(tiny_encoder, beir_dir, EvaluateParams(batch_size=2), cache=False).run
    spread = EvaluateParams(batch_size=2, devices=["cpu", "cpu"])
    assert evaluate_dense(tiny_encoder, beir_dir, spread, cache=False).run == default
    chunked = evaluate_dense(tiny_encoder, beir_dir, EvaluateParams(batch_size=2, search_chunk_size=1), cache=False).run
    assert {q: list(hits) for q, hits in chunked.items()} == {q: list(hits) for q, hits in default.items()}
    assert chunked == {q: pytest.approx(hits, rel=1e-6) for q, hits in default.items()}


class FakedCuda:
    """A test double for torch.cuda: `count` GPUs visible (none when 0)."""

    def __init__(self, monkeypatch, count: int) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: count)


def test_the_corpus_is_spread_over_every_visible_gpu_by_default(monkeypatch):
    FakedCuda(monkeypatch, 3)
    assert encoding_devices("cuda") == ["cuda:0", "cuda:1", "cuda:2"]
    assert encoding_devices("cuda", ["cuda:2", "cuda:0"]) == ["cuda:2", "cuda:0"]
    assert encoding_devices("cpu") is None  # the CPU default encodes in one process, as before
    FakedCuda(monkeypatch, 1)
    assert encoding_devices("cuda") is None


@pytest.mark.parametrize(
    ("count", "devices", "message"),
    [
        (2, ["cuda:0", "cuda:5"], r"evaluate.devices names cuda:5, but torch sees 2 GPU\(s\): cuda:0 to cuda:1"),
        (0, ["cuda:0"], "evaluate.devices names cuda:0, but torch sees no GPU here"),
        (2, ["cpu"], "evaluate.devices names cpu, but the encoder runs on cuda: list cuda devices only"),
    ],
)
def test_devices_this_machine_lacks_are_refused_by_key(monkeypatch, count, devices, message):
    FakedCuda(monkeypatch, count)
    with pytest.raises(ConfigError, match=message):
        encoding_devices("cuda", devices, "evaluate.devices")


@pytest.fixture
def params() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({"devices": ["gpu0"]}, r"evaluate.devices.0: .*device 'gpu0' is not cpu, cuda or cuda:N"),
        ({"devices": ["cuda:-1"]}, "device 'cuda:-1' is not cpu, cuda or cuda:N"),
        ({"devices": ["cuda:999"]}, "device 'cuda:999' is not cpu, cuda or cuda:N"),
        ({"devices": ["cpu\x1b[2J"]}, r"device 'cpu\\x1b\[2J' is not cpu"),
        ({"devices": ["../cpu"]}, "device '../cpu' is not cpu"),
        ({"devices": [""]}, "device '' is not cpu"),
        ({"devices": "cuda:0"}, "evaluate.devices: Input should be a valid list"),
        ({"devices": [0]}, "evaluate.devices.0: Input should be a valid string"),
        ({"devices": ["cpu"] * 65}, "evaluate.devices: List should have at most 64 items"),
        ({"devices": ["cuda:0"]}, "evaluate.devices: cuda:0 is not a cpu device .*: list cpu devices only"),
        ({"search_chunk_size": 0}, "evaluate.search_chunk_size: Input should be greater than 0"),
        ({"search_chunk_size": -5}, "evaluate.search_chunk_size: Input should be greater than 0"),
        ({"search_chunk_size": 10**12}, "evaluate.search_chunk_size: Input should be less than or equal to"),
        ({"search_chunk_size": 1.5}, "evaluate.search_chunk_size: Input should be a valid integer"),
        ({"search_chunk_size": float("nan")}, "evaluate.search_chunk_size: Input should be a valid integer"),
        ({"search_chunk_size": "4096"}, "evaluate.search_chunk_size: Input should be a valid integer"),
        ({"search_chunk_size": True}, "evaluate.search_chunk_size: Input should be a valid integer"),
    ],
)
def test_search_and_encoding_params_are_checked_by_key(params, edit, message):
    params["evaluate"].update(edit)
    with pytest.raises(ConfigError, match=message) as error:
        parse_params(params)
    assert str(error.value).count("\n") == 0


def test_the_repository_params_keep_the_previous_search():
    evaluate = parse_params(yaml.safe_load((REPO / "params.yaml").read_text())).evaluate
    assert evaluate.search_chunk_size == retrieval.DOC_CHUNK == 65536 and evaluate.devices == []


def test_the_search_memory_benchmark_runs_on_the_cpu(tmp_path, monkeypatch):
    """benchmarks/bench_search_memory.py measures on a GPU; here its tiny CPU mode keeps it from rotting."""
    import json
    import runpy
    import sys

    output = tmp_path / "memory.json"
    monkeypatch.setattr(sys, "argv", ["bench", "--cpu-smoke", "--output", str(output)])
    runpy.run_path(str(REPO / "benchmarks" / "bench_search_memory.py"), run_name="__main__")
    runs = json.loads(output.read_text())["runs"]
    assert [(r["dim"], r["docs"]) for r in runs] == [(384, 300), (384, 600), (768, 300), (768, 600)]
    assert runs[0]["stated_mib"] == runs[1]["stated_mib"]  # the corpus size does not enter the device
