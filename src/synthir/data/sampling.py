"""Nested deterministic sampling (DESIGN.md §3).

An order of the corpus ids is fixed once; fraction f takes its first ceil(f*N) ids. So 25% is a prefix of 50%
is a prefix of 100%: sweeps are comparable and scaling up only adds documents. The order is a seeded
permutation (random) or a round robin over k-means clusters (diverse, DAGR's selective augmentation).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np


def corpus_order(doc_ids: Iterable[str], seed: int) -> list[str]:
    """The seeded permutation every fraction is a prefix of (independent of input order)."""
    ids = sorted(set(doc_ids))
    order = np.random.default_rng(seed).permutation(len(ids))
    return [ids[i] for i in order]


def sample_ids(doc_ids: Iterable[str], fraction: float, seed: int) -> list[str]:
    return take_fraction(corpus_order(doc_ids, seed), fraction)


def diverse_order(doc_ids: list[str], embeddings: np.ndarray, clusters: int, seed: int) -> list[str]:
    """Every document, ordered so that each prefix spreads over the corpus: k-means (scikit-learn) groups the
    embeddings, then rounds take one document from each cluster in a seeded cluster order, each cluster giving
    its documents nearest its centroid first. Small clusters are thus covered early, and a fraction of the
    order is a prefix of any larger one (nested, like `sample_ids`)."""
    from sklearn.cluster import KMeans

    by_id = sorted(range(len(doc_ids)), key=doc_ids.__getitem__)  # independent of input order
    doc_ids, embeddings = [doc_ids[i] for i in by_id], np.asarray(embeddings)[by_id]
    k = min(clusters, len(doc_ids))
    kmeans = KMeans(n_clusters=k, n_init=3, random_state=seed).fit(embeddings)
    distance = np.linalg.norm(embeddings - kmeans.cluster_centers_[kmeans.labels_], axis=1)
    members: list[list[str]] = [[] for _ in range(k)]
    for i in np.lexsort((np.arange(len(doc_ids)), distance)):  # nearest first, ties by id
        members[kmeans.labels_[i]].append(doc_ids[i])
    members = sorted((m for m in members if m), key=min)  # named by their smallest id, not k-means' numbers
    visit = np.random.default_rng(seed).permutation(len(members))
    order = []
    for depth in range(max(map(len, members))):
        order += [members[c][depth] for c in visit if depth < len(members[c])]
    return order


def take_fraction(order: list[str], fraction: float) -> list[str]:
    """The first ceil(fraction * N) ids of an order."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    return order[: math.ceil(fraction * len(order))]
