"""Retrieval: sentence-transformers encoding + exact top-k search, and BM25 (bm25s).

A run maps query id -> {doc id: score}; a hit whose id equals its query id is dropped (BEIR convention).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from .backbones import build_encoder, check_positions, is_gguf
from .beir import Corpus, Queries, passage_text
from .config import Bm25Params
from .devices import DTYPES, check_device
from .errors import ConfigError, DataError, excerpt
from .fileio import atomic_file, cache_root
from .models import resolve

log = logging.getLogger(__name__)

Run = dict[str, dict[str, float]]


def encoder_record(settings) -> dict[str, str]:
    """The device and precision a stage encoded or scored in, as its metrics record them."""
    return {"device": settings.device, "dtype": settings.dtype}


def _dtype(name: str, loaded: torch.dtype) -> torch.dtype:
    if name == "at_least_float32":  # training's master weights; a float64 checkpoint stays float64
        return torch.promote_types(loaded, torch.float32)
    if name not in DTYPES:
        raise ConfigError(f"dtype {excerpt(name)} is not one of {', '.join(DTYPES)}")
    return DTYPES[name]


def load_encoder(
    ref: str,
    max_seq_length: int | None = None,
    device: str = "cpu",
    dtype: str = "float32",
    pooling: str | None = None,
    keep_layers: int = 0,
    block: str = "",
    length_key: str = "",
):
    """A SentenceTransformer from a model reference on `device` in `dtype` (float32 on the CPU by default: the
    same params encode alike on any machine); errors name `block`'s device and dtype keys, and `length_key` (else
    `block`.max_seq_length) when `max_seq_length` is beyond the model's positions. With `pooling` or
    `keep_layers` set, or a GGUF file, it is built from the plain model (`synthir.backbones`)."""
    from sentence_transformers import SentenceTransformer

    keys = (f"{block}.device", f"{block}.dtype") if block else ("device", "dtype")
    check_device(device, dtype, *keys)
    path = resolve(ref)
    if pooling or keep_layers or is_gguf(path):
        model = build_encoder(path, pooling or "lasttoken", keep_layers, max_seq_length, device)
    else:
        model = SentenceTransformer(path, device=device)
    check_positions(model, max_seq_length, length_key or (f"{block}.max_seq_length" if block else "max_seq_length"))
    model.to(_dtype(dtype, next(model.parameters()).dtype))
    if max_seq_length:
        model.max_seq_length = max_seq_length
    if model.similarity_fn_name not in (None, "cosine", "dot"):
        raise ConfigError(f"{ref}: similarity '{model.similarity_fn_name}' is not supported (cosine or dot)")
    return model


@dataclass(frozen=True)
class Prefixes:
    """Model-specific instructions, e.g. e5's `query: ` and `passage: `."""

    query: str = ""
    passage: str = ""


def encode(model, texts: Sequence[str], batch_size: int, prefix: str = "", desc: str = "") -> torch.Tensor:
    """Embeddings as float32 on the model's device, L2-normalised when the model scores by cosine."""
    with torch.inference_mode():
        embeddings = model.encode(
            [prefix + t for t in texts] if prefix else list(texts),
            batch_size=batch_size,
            convert_to_tensor=True,
            show_progress_bar=bool(desc) and len(texts) > batch_size,
            normalize_embeddings=model.similarity_fn_name in (None, "cosine"),
        )
    return embeddings.float()


def model_fingerprint(model) -> str:
    """A hash of the weights and the input settings that shape an embedding."""
    digest = hashlib.sha256(f"{model.max_seq_length}|{model.similarity_fn_name}|{model}".encode())
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def encode_passages(
    model,
    texts: Sequence[str],
    batch_size: int,
    prefix: str = "",
    cache: bool = True,
    devices: Sequence[str] | None = None,
) -> torch.Tensor:
    """Corpus embeddings as float32 on the host (`encode_corpus`; a memory map of the cached file when cached),
    memoised on disk under $SYNTHIR_CACHE_DIR/embeddings (keyed by the model's weights, settings, prefix, device
    type and every text), so the baseline, round-trip filter and dense mining encode it once, and a device's
    embeddings never stand in for another's. `devices` spreads the encoding over processes (`encode_corpus`)."""
    if not cache or os.environ.get("SYNTHIR_EMBEDDING_CACHE") == "0" or not texts:
        return torch.from_numpy(encode_corpus(model, texts, batch_size, prefix, devices))
    digest = hashlib.sha256(model_fingerprint(model).encode() + prefix.encode())
    if model.device.type != "cpu":  # the CPU's keys stay those its caches were written under
        digest.update(f"|{model.device.type}".encode())
    for text in texts:
        digest.update(text.encode() + b"\0")
    path = cache_root() / "embeddings" / f"{digest.hexdigest()}.npy"
    if not path.exists():
        with atomic_file(path, "w+b") as handle:
            encode_corpus(model, texts, batch_size, prefix, devices, lambda shape: _npy_map(handle, shape)).flush()
    return torch.from_numpy(np.load(path, mmap_mode="c"))  # copy-on-write: a writable view, pages read on demand


def _npy_map(handle, shape: tuple[int, int]) -> np.memmap:
    """A float32 .npy file of `shape` written on the open `handle` (read-write), its array mapped for writing."""
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)), "fortran_order": False, "shape": shape}
    np.lib.format.write_array_header_1_0(handle, header)
    offset = handle.tell()
    handle.truncate(offset + 4 * shape[0] * shape[1])
    handle.flush()
    return np.memmap(handle, dtype=np.float32, mode="r+", offset=offset, shape=shape)


def _length_order(model, texts: Sequence[str]) -> np.ndarray:
    """The order sentence-transformers' `encode` batches `texts` in: longest first (its own unstable argsort),
    interleaved long/short when the model flattens its inputs. Mirrors `_inference` (sentence-transformers 5-6)."""
    length = getattr(model, "_input_length", None) or model._text_length
    order = np.argsort([-length(text) for text in texts])
    flattens = getattr(model, "_can_flatten_inputs", None)
    return model._interleave_sorted_indices(order) if flattens is not None and flattens() else order


def corpus_batches(model, texts: Sequence[str], batch_size: int) -> list[np.ndarray]:
    """The batches (index arrays into `texts`, rows in the order encoded) of one `model.encode(texts)` call."""
    order = _length_order(model, texts)
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


def _as_sent(model, batch: np.ndarray, texts: Sequence[str]) -> np.ndarray:
    """`batch` rearranged so that `encode`'s sort of it restores `batch`'s row order: each batch then runs as
    in one call over the whole corpus (same rows, padding and row order), so its embeddings are the same bits.
    Falls back to `batch` (same rows and padding) when no such arrangement exists."""
    inner = _length_order(model, [texts[i] for i in batch])
    sent = np.empty_like(batch)
    sent[inner] = batch
    resorted = _length_order(model, [texts[i] for i in sent])
    return sent if np.array_equal(sent[resorted], batch) else batch


ENCODE_ROUND = 8
"""Batches per process handed to a multi-process pool at a time (then written out, so the host holds one
corpus copy)."""


def encode_corpus(
    model,
    texts: Sequence[str],
    batch_size: int,
    prefix: str = "",
    devices: Sequence[str] | None = None,
    allocate=None,
) -> np.ndarray:
    """Embeddings [len(texts), dim] as float32 in host memory, written batch by batch into `allocate((n, dim))`
    (default: a new array; e.g. a memory map), so the device holds only one batch. The batches are those of one
    `model.encode` call over all texts, so the result is bit-identical to it; with `devices` naming more than
    the model's own device, the batches are spread over one process per entry (sentence-transformers' pool),
    with the same batches and the same bits as one process on one device of that kind."""
    allocate = allocate or (lambda shape: np.empty(shape, dtype=np.float32))
    texts = [prefix + text for text in texts] if prefix else list(texts)
    if not texts:
        return allocate((0, 0))
    sent = [_as_sent(model, batch, texts) for batch in corpus_batches(model, texts, batch_size)]
    options = {"normalize_embeddings": model.similarity_fn_name in (None, "cosine"), "convert_to_numpy": True}
    options |= {"batch_size": batch_size, "show_progress_bar": False}
    out = None
    with torch.inference_mode(), _encoder_pool(model, devices) as pool:
        step = ENCODE_ROUND * len(pool["processes"]) if pool else 1
        rounds = range(0, len(sent), step)
        for start in tqdm(rounds, desc="corpus", disable=len(rounds) < 2):
            index = np.concatenate(sent[start : start + step])
            # one pool chunk per batch; each worker's sort of its chunk restores the batch's row order
            rows = model.encode([texts[i] for i in index], pool=pool, chunk_size=batch_size, **options)
            if out is None:
                out = allocate((len(texts), rows.shape[1]))
            out[index] = rows
    return out


@contextlib.contextmanager
def _encoder_pool(model, devices: Sequence[str] | None):
    """sentence-transformers' multi-process pool on `devices` (None when the model's own device does it alone);
    the model returns to its device afterwards (starting a pool moves it to the CPU)."""
    home = model.device
    if not devices or (len(devices) == 1 and _same_device(torch.device(devices[0]), home)):
        yield None
        return
    with _worker_threads(torch.get_num_threads()):  # a CPU worker then reduces floats as this process does
        pool = model.start_multi_process_pool(list(devices))
    try:
        yield pool
    finally:
        model.stop_multi_process_pool(pool)
        model.to(home)


@contextlib.contextmanager
def _worker_threads(count: int):
    """Spawned processes start torch with `count` intra-op threads (OMP_NUM_THREADS, read at their import)."""
    before = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = str(count)
    try:
        yield
    finally:
        if before is None:
            del os.environ["OMP_NUM_THREADS"]
        else:
            os.environ["OMP_NUM_THREADS"] = before


def _same_device(named: torch.device, actual: torch.device) -> bool:
    index = named.index if named.index is not None else (0 if named.type == "cuda" else None)
    return named.type == actual.type and index == actual.index


def check_devices(devices: Sequence[str], device: str, key: str = "devices") -> None:
    """Refuse encoding devices this machine lacks; the message names the param (or flag) `key`."""
    for name in devices:
        target = torch.device(name)
        if target.type != device:
            raise ConfigError(f"{key} names {name}, but the encoder runs on {device}: list {device} devices only")
        if target.type == "cuda":
            count = torch.cuda.device_count() if torch.cuda.is_available() else 0
            if count == 0:
                raise ConfigError(f"{key} names {name}, but torch sees no GPU here")
            if (target.index or 0) >= count:
                raise ConfigError(f"{key} names {name}, but torch sees {count} GPU(s): cuda:0 to cuda:{count - 1}")


def encoding_devices(device: str, devices: Sequence[str] = (), key: str = "devices") -> list[str] | None:
    """The devices a corpus is encoded on: `devices` if given (checked), else every visible GPU when `device`
    is cuda and there are several, else None (the encoder's own device alone)."""
    if devices:
        check_devices(devices, device, key)
        return list(devices)
    if device == "cuda" and torch.cuda.is_available() and torch.cuda.device_count() > 1:
        return [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    return None


DOC_CHUNK = 65536
"""Documents scored per step of the exact search (`evaluate.search_chunk_size`)."""
QUERY_CHUNK = 4096
"""Queries scored per step of the exact search."""


def search_device_bytes(
    num_queries: int, dim: int, k: int, num_docs: int, doc_chunk: int = DOC_CHUNK, query_chunk: int = QUERY_CHUNK
) -> int:
    """At most the bytes `top_k` holds on the search device at once (float32 scores, int64 indices): the query
    embeddings, one document chunk, one score block and the top-k bookkeeping. The corpus stays on the host, so
    its size enters only when it is smaller than a chunk."""
    chunk, block, k = min(doc_chunk, num_docs), min(query_chunk, num_queries), min(k, num_docs)
    queries = num_queries * dim * 4
    docs = chunk * dim * (4 + 1)  # and its finiteness check
    scores = block * chunk * 4
    picks = block * (k + 1) * 12 + block * k * 40  # a block's top k+1, then re-sorted by (score, index)
    running = num_queries * k * 12  # every query's running top k (documents are the outer loop)
    merge = block * 2 * k * 24 + block * k * 8  # running and new candidates side by side, sorted, gathered
    return queries + docs + scores + picks + running + merge


def doc_chunk_for_budget(
    budget_bytes: int, num_queries: int, dim: int, k: int, num_docs: int, query_chunk: int = QUERY_CHUNK
) -> int:
    """The largest document chunk whose `search_device_bytes` fits `budget_bytes` (a ConfigError when even one
    document does not)."""
    fits = lambda chunk: search_device_bytes(num_queries, dim, k, num_docs, chunk, query_chunk) <= budget_bytes  # noqa: E731
    if not fits(1):
        raise ConfigError(f"a search memory budget of {budget_bytes:,} bytes cannot hold {num_queries:,} queries")
    low, high = 1, max(1, num_docs)
    while low < high:
        middle = (low + high + 1) // 2
        low, high = (middle, high) if fits(middle) else (low, middle - 1)
    return low


def top_k(
    query_emb: torch.Tensor,
    doc_emb: torch.Tensor,
    k: int,
    doc_chunk: int = DOC_CHUNK,
    query_chunk: int = QUERY_CHUNK,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact inner-product top-k, returned on the CPU: scores descending, ties to the lower corpus index, whatever the
    chunk sizes. `doc_emb` may live on the host (a memory map too): `doc_chunk` documents at a time go to the
    queries' device and are scored against `query_chunk` queries at a time, keeping a running top-k per query
    (`search_device_bytes` states the peak)."""
    if doc_chunk < 1 or query_chunk < 1:
        raise ValueError(f"chunk sizes must be positive, got doc_chunk={doc_chunk}, query_chunk={query_chunk}")
    num_docs, device = doc_emb.shape[0], query_emb.device
    k = min(k, num_docs)
    _require_finite(query_emb, "query")
    blocks = [query_emb[start : start + query_chunk] for start in range(0, query_emb.shape[0], query_chunk)]
    best: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * len(blocks)
    for start in range(0, num_docs, doc_chunk):
        docs = doc_emb[start : start + doc_chunk].to(device)
        _require_finite(docs, "document", start)
        for b, queries in enumerate(blocks):
            values, index = _chunk_top(queries @ docs.T, k)
            index += start
            best[b] = (values, index) if best[b] is None else _merge(best[b], values, index, k)
    if not blocks or best[0] is None:
        empty = (query_emb.shape[0], 0)
        return torch.empty(empty, dtype=torch.float32), torch.empty(empty, dtype=torch.int64)
    return torch.cat([v.cpu() for v, _ in best]), torch.cat([i.cpu() for _, i in best])


def _require_finite(embeddings: torch.Tensor, kind: str, start: int = 0) -> None:
    """NaN or inf would rank first (torch sorts NaN above every number) and poison the run's scores."""
    finite = torch.isfinite(embeddings).all(dim=1)
    if not bool(finite.all()):
        row = start + int((~finite).nonzero()[0])
        raise DataError(f"{kind} embedding {row} is not finite (NaN or inf): encode in float32 (dtype)")


def _by_score_then_index(values: torch.Tensor, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows reordered by score descending, ties by lower index (a stable sort of the index-sorted rows)."""
    index, by_index = index.sort(dim=1)
    values, by_score = values.gather(1, by_index).sort(dim=1, descending=True, stable=True)
    return values, index.gather(1, by_score)


def _chunk_top(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's top k of a score block by (score descending, index ascending)."""
    if scores.shape[1] <= k:
        return scores.sort(dim=1, descending=True, stable=True)
    values, index = torch.topk(scores, k + 1, dim=1)
    # topk picks among scores tied with the k-th arbitrarily: redo those rows by the rule
    ambiguous = (values[:, k - 1] == values[:, k]).nonzero().flatten().tolist()
    values, index = _by_score_then_index(values[:, :k], index[:, :k])
    for row in ambiguous:
        values[row], index[row] = _row_top(scores[row], values[row, k - 1], k)
    return values, index


def _row_top(row: torch.Tensor, kth: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One row's top k when the k-th score is tied beyond k: everything above it, then the lowest-indexed ties."""
    above = (row > kth).nonzero().flatten()
    tied = (row == kth).nonzero().flatten()[: k - above.numel()]
    index = torch.cat([above, tied]).sort().values
    values, order = row[index].sort(descending=True, stable=True)
    return values, index[order]


def _merge(best, values: torch.Tensor, index: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The running top-k merged with a later chunk's: both follow the rule and every earlier index is lower, so a
    stable sort by score keeps ties in index order."""
    values = torch.cat([best[0], values], dim=1)
    index = torch.cat([best[1], index], dim=1)
    values, order = values.sort(dim=1, descending=True, stable=True)
    return values[:, :k].contiguous(), index.gather(1, order[:, :k])  # contiguous: frees the 2k-wide sort


def faiss_top_k(query_emb: torch.Tensor, doc_emb: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact inner-product top-k with a FAISS flat index (multi-threaded, lighter on memory for big corpora)."""
    try:
        import faiss
    except ImportError:
        raise ConfigError("evaluate.search is 'faiss' but faiss is not installed: pip install faiss-cpu") from None
    index = faiss.IndexFlatIP(doc_emb.shape[1])
    index.add(doc_emb.cpu().numpy())
    scores, ids = index.search(query_emb.cpu().numpy(), min(k, doc_emb.shape[0]))
    return torch.from_numpy(scores), torch.from_numpy(ids)


def to_run(query_ids: Sequence[str], doc_ids: Sequence[str], scores: np.ndarray, index: np.ndarray, depth: int) -> Run:
    """Turn top-k arrays into a run, dropping a hit whose id equals the query id."""
    run: Run = {}
    for qid, row_scores, row_index in zip(query_ids, scores.tolist(), index.tolist(), strict=True):
        hits = {}
        for score, i in zip(row_scores, row_index, strict=True):
            doc_id = doc_ids[i]
            if doc_id != qid and len(hits) < depth:
                hits[doc_id] = float(score)
        run[qid] = hits
    return run


def ranked(hits: dict[str, float]) -> list[tuple[str, float]]:
    """trec_eval's order: score descending, ties by doc id descending."""
    return sorted(hits.items(), key=lambda item: (item[1], item[0]), reverse=True)


RRF_K = 60
"""Reciprocal rank fusion's constant (Cormack, Clarke and Buettcher, SIGIR 2009)."""


def reciprocal_rank_fusion(runs: Sequence[Run], depth: int = 100, k: int = RRF_K) -> Run:
    """Fuse runs by ranks alone: a document scores the sum over runs of 1 / (k + rank), rank 1 the best (ties
    in a run broken as trec_eval breaks them). Each query keeps its top `depth`."""
    fused: Run = {}
    for run in runs:
        for query_id, hits in run.items():
            scores = fused.setdefault(query_id, {})
            for rank, (doc_id, _) in enumerate(ranked(hits), start=1):
                scores[doc_id] = scores.get(doc_id, 0.0) + 1.0 / (k + rank)
    return {q: dict(ranked(hits)[:depth]) for q, hits in fused.items()}


def dense_search(
    model,
    corpus: Corpus,
    queries: Queries,
    depth: int = 100,
    batch_size: int = 32,
    prefixes: Prefixes = Prefixes(),
    timings: dict[str, float] | None = None,
    search: str = "torch",
    cache: bool = True,
    search_chunk: int = DOC_CHUNK,
    devices: Sequence[str] | None = None,
) -> Run:
    """Each query's top `depth` documents by exact search (`top_k`, `search_chunk` documents at a time, or FAISS);
    the corpus is encoded on `devices` (`encode_corpus`) and kept on the host."""
    import time

    timings = {} if timings is None else timings
    doc_ids, query_ids = list(corpus), list(queries)
    start = time.perf_counter()
    query_emb = encode(model, [queries[q] for q in query_ids], batch_size, prefixes.query, "queries")
    timings["encode_queries"] = time.perf_counter() - start
    start = time.perf_counter()
    texts = [passage_text(corpus[d]) for d in doc_ids]
    doc_emb = encode_passages(model, texts, batch_size, prefixes.passage, cache, devices)
    timings["encode_corpus"] = time.perf_counter() - start
    start = time.perf_counter()
    if search == "faiss":
        scores, index = faiss_top_k(query_emb, doc_emb, depth + 1)  # +1: room to drop a self-hit
    else:
        need = search_device_bytes(len(query_ids), doc_emb.shape[1], depth + 1, len(doc_ids), search_chunk)
        log.info("exact search in chunks of %d documents: %.1f MiB on %s", search_chunk, need / 2**20, model.device)
        scores, index = top_k(query_emb, doc_emb, depth + 1, search_chunk)
    run = to_run(query_ids, doc_ids, scores.numpy(), index.numpy(), depth)
    timings["search"] = time.perf_counter() - start
    return run


class Bm25Index:
    """BM25 over title + text with bm25s (Lucene scoring), stopwords and a Snowball stemmer."""

    def __init__(self, corpus: Corpus, settings: Bm25Params = Bm25Params()) -> None:
        import bm25s

        self.settings = settings
        self.stemmer = None
        if settings.stemmer:
            import Stemmer

            self.stemmer = Stemmer.Stemmer(settings.stemmer)
        self.doc_ids = list(corpus)
        tokens = bm25s.tokenize(
            [passage_text(corpus[d]) for d in self.doc_ids],
            stopwords=settings.stopwords,
            stemmer=self.stemmer,
            show_progress=False,
        )
        self.index = bm25s.BM25(k1=settings.k1, b=settings.b)
        self.index.index(tokens, show_progress=False)

    def _tokens(self, queries: Sequence[str]) -> list[list[str]]:
        import bm25s

        return bm25s.tokenize(
            list(queries),
            stopwords=self.settings.stopwords,
            stemmer=self.stemmer,
            return_ids=False,
            show_progress=False,
        )

    def scores(self, queries: Sequence[str]) -> np.ndarray:
        """Scores [len(queries), len(corpus)] in corpus order."""
        tokens = self._tokens(queries)
        return np.stack([self.index.get_scores(t) for t in tokens]) if tokens else np.zeros((0, len(self.doc_ids)))

    def search(self, queries: Queries, depth: int) -> Run:
        """The top `depth` documents per query; documents matching no query term are left out."""
        query_ids = list(queries)
        hits, scores = self.index.retrieve(
            self._tokens([queries[q] for q in query_ids]), k=min(depth + 1, len(self.doc_ids)), show_progress=False
        )
        run = to_run(query_ids, self.doc_ids, scores, hits, depth)
        return {q: {d: s for d, s in found.items() if s > 0} for q, found in run.items()}


def bm25_search(
    corpus: Corpus,
    queries: Queries,
    depth: int = 100,
    settings: Bm25Params = Bm25Params(),
    timings: dict[str, float] | None = None,
) -> Run:
    import time

    timings = {} if timings is None else timings
    start = time.perf_counter()
    index = Bm25Index(corpus, settings)
    timings["index"] = time.perf_counter() - start
    start = time.perf_counter()
    run = index.search(queries, depth)
    timings["search"] = time.perf_counter() - start
    return run
