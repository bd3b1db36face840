"""Contrastive and preference losses for dense retriever training: the one path that training runs and the tests
check by hand.

A batch is query embeddings [B, d], passage embeddings [M, d] and, per query, the slots of its positives and
negatives among the passages (`Slots`). Similarity is cosine / tau throughout. Each loss is a thin layer over a
`*_from_scores` core on the scaled similarity matrix.

    mnrl        InfoNCE with in-batch and hard negatives (= sentence-transformers MultipleNegativesRankingLoss)
    snn         Syntriever's soft-nearest-neighbour loss: every positive of a query in the numerator
    partial_pl  partial Plackett–Luce: c+ ranked first and c− second among the whole batch's candidates
    bt          Bradley–Terry: σ(s+ − s−), no in-batch terms
    marginmse   GPL's Margin-MSE distillation: cos(q, p) − cos(q, n) regressed on a teacher's margin, no in-batch
                terms; teacher scores come in cosine units, [0, 1] (`synthir.triples.teacher`)
    listwise    listwise distillation (RocketQAv2; Tamber et al. 2025): per query, KL(teacher ‖ student) between
                softmaxes over its candidate list (first positive, negatives), the teacher's scores over
                `teacher_temperature`, the student's cosines over tau; no in-batch terms

The distillation losses may add `contrastive_weight` × mnrl, so that in-batch negatives count too.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor

from ..config import DISTILLED

DEFAULT_TAU = 0.05
STAGE1_LOSSES = ("mnrl", "snn", "marginmse", "listwise")
ALIGNMENT_LOSSES = ("partial_pl", "bt")

Slots = list[list[int]]
"""Per query, the rows of the passage matrix that are its positives (or its negatives)."""
Margins = list[list[float]]
"""Per query, the teacher's score of its positive minus that of each of its negatives (in `negatives` order)."""
BatchLoss = Callable[[Tensor, Tensor, Slots, Slots, Margins | None], Tensor]


def host_to_device(tensor: Tensor, device: torch.device | str) -> Tensor:
    """A host tensor on `device`. On CUDA it is pinned and copied without blocking: a copy from pageable memory
    waits for the GPU to finish its queued work, once per copy. On the CPU it is returned as is."""
    device = torch.device(device)
    if device.type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


def _index(values, device: torch.device | str) -> Tensor:
    """Row or column numbers built on the host, in one tensor on `device` (one copy)."""
    return host_to_device(torch.as_tensor(values, dtype=torch.long), device)


def similarity(queries: Tensor, docs: Tensor, tau: float = DEFAULT_TAU) -> Tensor:
    """Cosine similarity / tau: [B, d] x [M, d] -> [B, M]."""
    return F.normalize(queries, dim=-1) @ F.normalize(docs, dim=-1).T / tau


# --- score-level cores: `scores` are already cosine / tau ---


def mnrl_from_scores(scores: Tensor) -> Tensor:
    """[B, M] scores whose column i is query i's positive (the rest are negatives) -> mean −log softmax."""
    return F.cross_entropy(scores, torch.arange(scores.shape[0], device=scores.device))


def snn_from_scores(scores: Tensor, positive: Tensor) -> Tensor:
    """[B, M] scores; `positive` [B, M] marks each query's own positives.

    loss_i = −log(Σ_own positives exp(s) / Σ_all candidates exp(s)); queries without a positive are left out
    (none at all: 0, with a gradient). No branch on a device value, so no device sync.
    """
    has_positive = positive.any(dim=1)
    # the dtype's lowest finite value, not -inf: a row without a positive then stays finite (and has a zero
    # gradient) instead of turning the backward pass to NaN; exp of it is 0, as exp(-inf) is
    numerator = scores.masked_fill(~positive, torch.finfo(scores.dtype).min).logsumexp(dim=1)
    per_query = torch.where(has_positive, scores.logsumexp(dim=1) - numerator, torch.zeros_like(numerator))
    return per_query.sum() / has_positive.sum().clamp(min=1)


def partial_pl_from_scores(scores: Tensor) -> Tensor:
    """[B, 2B] scores over (c+_1..c+_B, c−_1..c−_B) -> mean −log P(c+_i first, c−_i second)."""
    batch = scores.shape[0]
    if scores.shape[1] != 2 * batch:
        raise ValueError(f"expected [B, 2B] scores, got {tuple(scores.shape)}")
    rows = torch.arange(batch, device=scores.device)
    s_pos, s_neg = scores[rows, rows], scores[rows, rows + batch]
    own_positive = torch.zeros_like(scores, dtype=torch.bool)
    own_positive[rows, rows] = True
    first = s_pos - scores.logsumexp(dim=1)
    second = s_neg - scores.masked_fill(own_positive, float("-inf")).logsumexp(dim=1)
    return -(first + second).mean()


def bt_from_scores(preferred: Tensor, dispreferred: Tensor) -> Tensor:
    """[B] scores of c+ and c− for their own query -> mean −log σ(s+ − s−)."""
    return -F.logsigmoid(preferred - dispreferred).mean()


def marginmse_from_scores(positive: Tensor, negative: Tensor, teacher_margin: Tensor) -> Tensor:
    """[P] student scores of each (query, positive) and (query, negative) pair, [P] teacher margins ->
    mean ((s+ − s−) − teacher margin)²."""
    return F.mse_loss(positive - negative, teacher_margin)


def listwise_from_scores(student: Tensor, teacher: Tensor, candidates: Tensor) -> Tensor:
    """[B, C] student and teacher logits (each already over its temperature) of each query's candidate list,
    `candidates` [B, C] marking the real entries of a padded list -> KL(softmax(teacher) ‖ softmax(student))
    summed over a query's candidates, averaged over the queries with two candidates or more (a list of one has
    nothing to distil). No branch on a device value, so no device sync."""
    lowest = torch.finfo(student.dtype).min  # not -inf: padding then keeps a finite log and a zero gradient
    log_student = student.masked_fill(~candidates, lowest).log_softmax(dim=1)
    log_teacher = teacher.masked_fill(~candidates, lowest).log_softmax(dim=1)
    terms = log_teacher.exp() * (log_teacher - log_student)
    per_query = torch.where(candidates, terms, torch.zeros_like(terms)).sum(dim=1)
    return per_query.sum() / (candidates.sum(dim=1) > 1).sum().clamp(min=1)


# --- batch losses: queries [B, d], passages [M, d], each query's positive and negative slots ---


def mnrl(queries: Tensor, passages: Tensor, positives: Slots, negatives: Slots, tau: float = DEFAULT_TAU) -> Tensor:
    """InfoNCE: each query against its first positive and every other passage of the batch (the passages' order
    does not change a softmax, so the first positives are the targets where they are)."""
    scores = similarity(queries, passages, tau)
    return F.cross_entropy(scores, _index([slots[0] for slots in positives], scores.device))


def snn(queries: Tensor, passages: Tensor, positives: Slots, negatives: Slots, tau: float = DEFAULT_TAU) -> Tensor:
    """Soft nearest neighbour: all of a query's positives in the numerator, every passage in the denominator."""
    own = torch.zeros(queries.shape[0], passages.shape[0], dtype=torch.bool)  # built on the host, copied once
    rows = [i for i, slots in enumerate(positives) for _ in slots]
    own[rows, [slot for slots in positives for slot in slots]] = True
    return snn_from_scores(similarity(queries, passages, tau), host_to_device(own, queries.device))


def _pair_scores(queries: Tensor, passages: Tensor, positives: Slots, negatives: Slots, tau: float) -> Tensor:
    """[B, 2B] scores over each query's (c+, c−): columns c+_1..c+_B, c−_1..c−_B."""
    if any(not slots for slots in negatives):
        raise ValueError("the alignment losses need a rejected passage for every example")
    columns = [slots[0] for slots in positives] + [slots[0] for slots in negatives]
    return similarity(queries, passages[_index(columns, passages.device)], tau)


def partial_pl(
    queries: Tensor, passages: Tensor, positives: Slots, negatives: Slots, tau: float = DEFAULT_TAU
) -> Tensor:
    """Partial Plackett–Luce over the batch's (c+, c−) pairs."""
    return partial_pl_from_scores(_pair_scores(queries, passages, positives, negatives, tau))


def bt(queries: Tensor, passages: Tensor, positives: Slots, negatives: Slots, tau: float = DEFAULT_TAU) -> Tensor:
    """Bradley–Terry on each query's own (c+, c−)."""
    scores = _pair_scores(queries, passages, positives, negatives, tau)
    rows = torch.arange(queries.shape[0], device=queries.device)
    return bt_from_scores(scores[rows, rows], scores[rows, rows + queries.shape[0]])


def marginmse(
    queries: Tensor, passages: Tensor, positives: Slots, negatives: Slots, margins: Margins, tau: float = DEFAULT_TAU
) -> Tensor:
    """Margin-MSE over every (query, first positive, negative) of the batch, in cosine units (tau unused)."""
    rows, pos, neg, target = [], [], [], []
    for i, (own, others, margin) in enumerate(zip(positives, negatives, margins, strict=True)):
        for slot, value in zip(others, margin, strict=True):
            rows.append(i), pos.append(own[0]), neg.append(slot), target.append(value)
    if not rows:
        return queries.sum() * 0.0
    cosine = F.normalize(queries, dim=-1) @ F.normalize(passages, dim=-1).T
    rows, pos, neg = _index([rows, pos, neg], cosine.device)
    teacher = host_to_device(torch.tensor(target, dtype=cosine.dtype), cosine.device)
    return marginmse_from_scores(cosine[rows, pos], cosine[rows, neg], teacher)


def candidate_lists(positives: Slots, negatives: Slots, margins: Margins) -> tuple[list, list, list]:
    """Each query's candidate list, padded to the longest: its passage slots (first positive, then negatives),
    the teacher's scores up to a per-query shift (0 for the positive, −margin for each negative: a softmax does
    not see the shift) and which entries are real."""
    width = 1 + max((len(slots) for slots in negatives), default=0)
    columns, teacher, real = [], [], []
    for own, others, margin in zip(positives, negatives, margins, strict=True):
        if len(margin) != len(others):
            raise ValueError(f"{len(margin)} teacher margins for {len(others)} negatives")
        padding = width - 1 - len(others)
        columns.append([own[0], *others] + [own[0]] * padding)
        teacher.append([0.0, *(-value for value in margin)] + [0.0] * padding)
        real.append([True] * (1 + len(others)) + [False] * padding)
    return columns, teacher, real


def listwise(
    queries: Tensor,
    passages: Tensor,
    positives: Slots,
    negatives: Slots,
    margins: Margins,
    tau: float = DEFAULT_TAU,
    teacher_temperature: float = DEFAULT_TAU,
) -> Tensor:
    """Listwise distillation over each query's first positive and negatives: the teacher's scores (from its
    margins) over `teacher_temperature` against the student's cosines over `tau`."""
    columns, teacher, real = candidate_lists(positives, negatives, margins)
    cosine = F.normalize(queries, dim=-1) @ F.normalize(passages, dim=-1).T
    student = cosine.gather(1, _index(columns, cosine.device)) / tau
    teacher = host_to_device(torch.tensor(teacher, dtype=cosine.dtype), cosine.device) / teacher_temperature
    return listwise_from_scores(student, teacher, host_to_device(torch.tensor(real), cosine.device))


LOSSES: dict[str, Callable[..., Tensor]] = {
    "mnrl": mnrl,
    "snn": snn,
    "partial_pl": partial_pl,
    "bt": bt,
    "marginmse": marginmse,
    "listwise": listwise,
}


def batch_loss(
    name: str, tau: float, teacher_temperature: float = DEFAULT_TAU, contrastive_weight: float = 0.0
) -> BatchLoss:
    """The loss registered as `name` at temperature `tau`: (queries, passages, positives, negatives, teacher
    margins or None) -> scalar. Only the distillation losses read the margins; they add `contrastive_weight`
    × mnrl (listwise: the teacher's softmax at `teacher_temperature`)."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss '{name}'; choose one of {sorted(LOSSES)}")
    for setting, value in (("tau", tau), ("teacher_temperature", teacher_temperature)):
        if not 0 < value < math.inf:
            raise ValueError(f"{setting} must be positive and finite, got {value}")
    if not 0 <= contrastive_weight < math.inf:
        raise ValueError(f"contrastive_weight must be >= 0 and finite, got {contrastive_weight}")
    if name not in DISTILLED:
        loss = partial(LOSSES[name], tau=tau)
        return lambda queries, passages, positives, negatives, _=None: loss(queries, passages, positives, negatives)
    distil = partial(listwise, tau=tau, teacher_temperature=teacher_temperature) if name == "listwise" else marginmse
    return with_contrastive(distil, contrastive_weight, tau) if contrastive_weight else distil


def with_contrastive(distil: BatchLoss, weight: float, tau: float) -> BatchLoss:
    """A distillation loss plus `weight` × mnrl on the same batch (each query's first positive against every
    other passage)."""

    def combined(queries: Tensor, passages: Tensor, positives: Slots, negatives: Slots, margins: Margins) -> Tensor:
        contrastive = mnrl(queries, passages, positives, negatives, tau)
        return distil(queries, passages, positives, negatives, margins) + weight * contrastive

    return combined
