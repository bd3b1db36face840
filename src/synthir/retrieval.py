"""Retrieval: sentence-transformers encoding + exact top-k search, and BM25 (bm25s).

A run maps query id -> {doc id: score}; a hit whose id equals its query id is dropped (BEIR convention).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .backbones import build_encoder, check_positions, is_gguf
from .beir import Corpus, Queries, passage_text
from .config import Bm25Params
from .devices import DTYPES, check_device
from .errors import ConfigError, excerpt
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


def encode_passages(model, texts: Sequence[str], batch_size: int, prefix: str = "", cache: bool = True) -> torch.Tensor:
    """`encode` for a corpus, memoised on disk under $SYNTHIR_CACHE_DIR/embeddings (keyed by the model's weights,
    settings, prefix, device type and every text), so the baseline, round-trip filter and dense mining encode it
    once, and a device's embeddings never stand in for another's."""
    if not cache or os.environ.get("SYNTHIR_EMBEDDING_CACHE") == "0":
        return encode(model, texts, batch_size, prefix, "corpus")
    digest = hashlib.sha256(model_fingerprint(model).encode() + prefix.encode())
    if model.device.type != "cpu":  # the CPU's keys stay those its caches were written under
        digest.update(f"|{model.device.type}".encode())
    for text in texts:
        digest.update(text.encode() + b"\0")
    path = cache_root() / "embeddings" / f"{digest.hexdigest()}.npy"
    if path.exists():
        return torch.from_numpy(np.load(path)).to(model.device)
    embeddings = encode(model, texts, batch_size, prefix, "corpus")
    with atomic_file(path, "wb") as handle:
        np.save(handle, embeddings.cpu().numpy())
    return embeddings


def top_k(
    query_emb: torch.Tensor,
    doc_emb: torch.Tensor,
    k: int,
    doc_chunk: int = 65536,
    query_chunk: int = 4096,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact inner-product top-k, in chunks so memory stays bounded on large corpora."""
    k = min(k, doc_emb.shape[0])
    all_scores, all_index = [], []
    for q0 in range(0, query_emb.shape[0], query_chunk):
        queries = query_emb[q0 : q0 + query_chunk]
        best_scores = best_index = None
        for d0 in range(0, doc_emb.shape[0], doc_chunk):
            scores = queries @ doc_emb[d0 : d0 + doc_chunk].T
            values, index = torch.topk(scores, min(k, scores.shape[1]), dim=1)
            index += d0
            if best_scores is not None:
                values = torch.cat([best_scores, values], dim=1)
                index = torch.cat([best_index, index], dim=1)
                values, order = torch.topk(values, k, dim=1)
                index = torch.gather(index, 1, order)
            best_scores, best_index = values, index
        all_scores.append(best_scores.cpu())
        all_index.append(best_index.cpu())
    return torch.cat(all_scores), torch.cat(all_index)


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
) -> Run:
    import time

    timings = {} if timings is None else timings
    doc_ids, query_ids = list(corpus), list(queries)
    start = time.perf_counter()
    query_emb = encode(model, [queries[q] for q in query_ids], batch_size, prefixes.query, "queries")
    timings["encode_queries"] = time.perf_counter() - start
    start = time.perf_counter()
    doc_emb = encode_passages(model, [passage_text(corpus[d]) for d in doc_ids], batch_size, prefixes.passage, cache)
    timings["encode_corpus"] = time.perf_counter() - start
    start = time.perf_counter()
    searcher = faiss_top_k if search == "faiss" else top_k
    scores, index = searcher(query_emb, doc_emb, depth + 1)  # +1: room to drop a self-hit
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
