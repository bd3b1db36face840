"""Hard-negative mining: BM25, dense (base retriever), cross-encoder (or the LLM's pointwise yes/no score).

Every method scores candidates for a query; a candidate is eligible if it ranks in [rank_from, rank_to), has a
score (a reranker scores only the first stage's top `rerank_depth`; the rest are -inf and never chosen), is not a
known positive, and (false-negative guard) scores at most `max_score` and at least `margin` below the positive.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..beir import Corpus, passage_text

if TYPE_CHECKING:
    from sentence_transformers import CrossEncoder

ScoreRows = Callable[[Sequence[str]], np.ndarray]
"""Queries -> scores [len(queries), len(corpus)] in corpus order."""


@dataclass(frozen=True)
class MiningRule:
    num_negatives: int = 1
    rank_from: int = 10
    rank_to: int = 50
    margin: float | None = None
    max_score: float | None = None
    strategy: str = "random"  # random: sample eligible candidates; top: the highest-ranked ones


def bm25_rows(corpus: Corpus) -> ScoreRows:
    from ..retrieval import Bm25Index

    return Bm25Index(corpus).scores


def dense_rows(
    model, corpus: Corpus, batch_size: int = 16, query_prefix: str = "", passage_prefix: str = ""
) -> ScoreRows:
    from ..retrieval import encode, encode_passages

    texts = [passage_text(corpus[d]) for d in corpus]
    docs = encode_passages(model, texts, batch_size, passage_prefix).to(model.device)  # mining scores on the device

    def rows(queries: Sequence[str]) -> np.ndarray:
        emb = encode(model, list(queries), batch_size, query_prefix)
        return (emb @ docs.T).cpu().numpy()

    return rows


def choose(
    row: np.ndarray, doc_ids: Sequence[str], positives: set[str], rule: MiningRule, rng: random.Random
) -> list[tuple[str, float]]:
    """Negatives (id, score) for one query from its score row over the corpus."""
    order = np.argsort(-row, kind="stable")
    position = {d: i for i, d in enumerate(doc_ids)}
    known = [row[position[p]] for p in positives if p in position]
    ceiling = rule.max_score if rule.max_score is not None else np.inf
    if known and rule.margin is not None:
        ceiling = min(ceiling, max(known) - rule.margin)
    eligible = []
    for rank, index in enumerate(order[: rule.rank_to]):
        doc_id = doc_ids[index]
        unscored = not np.isfinite(row[index])
        if rank >= rule.rank_from and not unscored and doc_id not in positives and row[index] <= ceiling:
            eligible.append((doc_id, float(row[index])))
    if rule.strategy == "random" and len(eligible) > rule.num_negatives:
        return sorted(rng.sample(eligible, rule.num_negatives), key=lambda e: -e[1])
    return eligible[: rule.num_negatives]


def rerank_rows(
    pair_scores: Callable[[list[tuple[str, str]]], list[float]], first_stage: ScoreRows, corpus: Corpus, depth: int
) -> ScoreRows:
    """Cross-encoder style: rescore the first stage's top `depth` with `pair_scores`; the rest score -inf."""
    doc_ids = list(corpus)

    def rows(queries: Sequence[str]) -> np.ndarray:
        base = first_stage(queries)
        out = np.full_like(base, -np.inf, dtype=np.float64)
        for i, query in enumerate(queries):
            top = np.argsort(-base[i], kind="stable")[:depth]
            scores = pair_scores([(query, passage_text(corpus[doc_ids[j]])) for j in top])
            out[i, top] = scores
        return out

    return rows


def require_cross_encoder(model_ref: str, path: str, key: str = "triples.negatives.model") -> None:
    """Refuse a model without a trained relevance head: a bi-encoder loaded as a CrossEncoder gets a randomly
    initialised classifier and would score passages at random; a classifier of several labels (NLI) has no one
    relevance logit. `key`: the params key that named the model."""
    from transformers import AutoConfig

    from ..errors import ConfigError

    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as error:
        raise ConfigError(f"{key}: '{model_ref}' cannot be loaded as a cross-encoder ({error})") from None
    architectures = config.architectures or []
    if not any(name.endswith("ForSequenceClassification") for name in architectures):
        declared = ", ".join(architectures) or "no architecture"
        raise ConfigError(
            f"{key}: '{model_ref}' is not a cross-encoder (its config declares {declared}, no trained relevance "
            f"head); use e.g. cross-encoder/ms-marco-MiniLM-L-6-v2 online, or offline the LLM's yes/no log-probs "
            "(triples.negatives.judge; triples.teacher.method: llm)"
        )
    if config.num_labels != 1:
        raise ConfigError(
            f"{key}: '{model_ref}' classifies a pair into {config.num_labels} labels; a relevance cross-encoder "
            "scores it with one logit (e.g. cross-encoder/ms-marco-MiniLM-L-6-v2)"
        )


def load_cross_encoder(
    model_ref: str, device: str = "cpu", dtype: str = "float32", key: str = "triples.negatives.model"
) -> CrossEncoder:
    """A sentence-transformers CrossEncoder with one relevance logit (`require_cross_encoder`), on `device` in
    `dtype` (explicit, as every encoder); a reference that does not resolve is a ConfigError naming `key`."""
    from sentence_transformers import CrossEncoder

    from ..devices import DTYPES
    from ..errors import ConfigError, ModelRefError
    from ..models import resolve

    try:
        path = resolve(model_ref)
    except ModelRefError as error:
        raise ConfigError(f"{key}: {error}") from None
    require_cross_encoder(model_ref, path, key)
    model = CrossEncoder(path, device=device)
    model.to(DTYPES[dtype])
    return model


def cross_encoder_pairs(
    model_ref: str, batch_size: int = 32, device: str = "cpu", dtype: str = "float32"
) -> Callable[[list[tuple[str, str]]], list[float]]:
    """A CrossEncoder's scores of (query, passage) pairs (its own activation: its config's, else a sigmoid)."""
    model = load_cross_encoder(model_ref, device, dtype)
    return lambda pairs: [float(s) for s in model.predict(pairs, batch_size=batch_size, show_progress_bar=False)]
