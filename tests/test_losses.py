import itertools
import math

import pytest
import torch

from synthir.errors import ConfigError
from synthir.losses import (
    LOSSES,
    MNRLLoss,
    SNNLoss,
    bt_from_scores,
    bt_loss,
    make_loss,
    mnrl_from_scores,
    mnrl_loss,
    partial_pl_from_scores,
    partial_pl_loss,
    snn_from_scores,
    snn_loss,
)

TAU = 0.5


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These tensors are tiny: extra intra-op threads only add overhead (seconds on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def t(*rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64)


def e(cos: float) -> float:
    """exp(cosine / TAU)"""
    return math.exp(cos / TAU)


# --- mnrl ---


def test_mnrl_by_hand():
    queries = t((3.0, 0.0), (0.0, 1.0))  # unnormalised on purpose: similarity is cosine
    positives = t((1.0, 0.0), (0.6, 0.8))
    negatives = t([(0.8, 0.6)], [(-1.0, 0.0)])  # [B, H=1, d]
    # q1 · (p1, p2, h1, h2) = (1, .6, .8, -1);  q2 · (p1, p2, h1, h2) = (0, .8, .6, 0)
    loss_1 = -math.log(e(1) / (e(1) + e(0.6) + e(0.8) + e(-1)))
    loss_2 = -math.log(e(0.8) / (e(0) + e(0.8) + e(0.6) + e(0)))
    assert mnrl_loss(queries, positives, negatives, TAU).item() == pytest.approx((loss_1 + loss_2) / 2)
    in_batch_only = (-math.log(e(1) / (e(1) + e(0.6))) - math.log(e(0.8) / (e(0) + e(0.8)))) / 2
    assert mnrl_loss(queries, positives, tau=TAU).item() == pytest.approx(in_batch_only)


def test_mnrl_gradient_signs():
    scores = torch.tensor([[2.0, 1.0, 0.5], [0.3, 1.5, -1.0]], requires_grad=True)  # column i = positive of i
    mnrl_from_scores(scores).backward()
    own = torch.eye(2, 3, dtype=torch.bool)
    assert (scores.grad[own] < 0).all() and (scores.grad[~own] > 0).all()


# --- snn ---


def snn_batch() -> tuple[torch.Tensor, ...]:
    """3 queries, P=2, N=1; query 3 has no positive. Garbage (7, 7) / (5, 5) / (-1, 0) sits in masked slots."""
    queries = t((1.0, 0.0), (0.0, 1.0), (0.6, 0.8))
    pos = t([(1.0, 0.0), (0.6, 0.8)], [(0.0, 1.0), (5.0, 5.0)], [(7.0, 7.0), (7.0, 7.0)])
    pos_mask = torch.tensor([[True, True], [True, False], [False, False]])
    neg = t([(0.8, -0.6)], [(-1.0, 0.0)], [(0.0, -1.0)])
    neg_mask = torch.tensor([[True], [False], [True]])
    return queries, pos, pos_mask, neg, neg_mask


def test_snn_by_hand():
    # valid candidates: a=(1,0), b=(.6,.8) [q1's positives], c=(0,1) [q2's], d=(.8,-.6) [q1's neg], e=(0,-1) [q3's neg]
    # q1 · (a, b, c, d, e) = (1, .6, 0, .8, 0);  q2 · (a, b, c, d, e) = (0, .8, 1, -.6, -1);  q3 has no positive
    loss_1 = -math.log((e(1) + e(0.6)) / (e(1) + e(0.6) + e(0) + e(0.8) + e(0)))
    loss_2 = -math.log(e(1) / (e(0) + e(0.8) + e(1) + e(-0.6) + e(-1)))
    assert snn_loss(*snn_batch(), tau=TAU).item() == pytest.approx((loss_1 + loss_2) / 2)


def test_snn_ignores_absent_items():
    queries, pos, pos_mask, neg, neg_mask = snn_batch()
    queries.requires_grad_(True)
    pos.requires_grad_(True)
    expected = snn_loss(queries, pos, pos_mask, neg, neg_mask, TAU)
    expected.backward()
    assert (pos.grad[~pos_mask] == 0).all() and (queries.grad[2] == 0).all()  # masked items, positive-less query
    garbage = pos.detach().clone()
    garbage[~pos_mask] = float("nan")
    assert snn_loss(queries, garbage, pos_mask, neg, neg_mask, TAU).item() == pytest.approx(expected.item())
    # extra columns that are absent everywhere change nothing either
    widened = snn_loss(
        queries,
        torch.cat([pos, pos[:, :1]], dim=1),
        torch.cat([pos_mask, torch.zeros(3, 1, dtype=torch.bool)], dim=1),
        torch.cat([neg, neg], dim=1),
        torch.cat([neg_mask, torch.zeros(3, 1, dtype=torch.bool)], dim=1),
        TAU,
    )
    assert widened.item() == pytest.approx(expected.item())


def test_snn_with_one_positive_each_is_mnrl():
    generator = torch.Generator().manual_seed(0)
    queries, pos, neg = (torch.randn(shape, generator=generator) for shape in ((3, 4), (3, 1, 4), (3, 2, 4)))
    assert snn_loss(queries, pos, neg=neg, tau=TAU).item() == pytest.approx(
        mnrl_loss(queries, pos[:, 0], neg, TAU).item()
    )


def test_snn_gradient_signs():
    # candidates: q1's two positives, q2's positive, q1's negative, q2's (absent) negative
    scores = torch.tensor([[2.0, 1.0, 0.5, 0.7, 9.0], [0.1, 0.2, 1.5, -0.3, 9.0]], requires_grad=True)
    positive = torch.tensor([[True, True, False, False, False], [False, False, True, False, False]])
    valid = torch.tensor([True, True, True, True, False])
    snn_from_scores(scores, positive, valid).backward()
    assert (scores.grad[positive] < 0).all()
    assert (scores.grad[~positive & valid] > 0).all()  # other queries' positives and all negatives repel
    assert (scores.grad[:, ~valid] == 0).all()


def test_snn_without_any_positive_is_zero_with_grad():
    scores = torch.zeros(2, 3, requires_grad=True)
    loss = snn_from_scores(scores, torch.zeros(2, 3, dtype=torch.bool), torch.ones(3, dtype=torch.bool))
    assert loss.item() == 0 and loss.requires_grad


# --- partial Plackett–Luce ---


def test_partial_pl_by_hand():
    queries = t((1.0, 0.0), (0.0, 1.0))
    preferred = t((1.0, 0.0), (0.0, 1.0))
    dispreferred = t((0.6, 0.8), (-0.6, 0.8))
    # q1: c+1 = 1, c−1 = .6, others (c+2, c−2) = (0, -.6);  q2: c+2 = 1, c−2 = .8, others (c+1, c−1) = (0, .8)
    p_1 = e(1) / (e(1) + e(0.6) + e(0) + e(-0.6)) * e(0.6) / (e(0.6) + e(0) + e(-0.6))
    p_2 = e(1) / (e(1) + e(0.8) + e(0) + e(0.8)) * e(0.8) / (e(0.8) + e(0) + e(0.8))
    expected = (-math.log(p_1) - math.log(p_2)) / 2
    assert partial_pl_loss(queries, preferred, dispreferred, TAU).item() == pytest.approx(expected)


def plackett_luce(weights: list[float], order: tuple[int, ...]) -> float:
    """P(order) when each next item is drawn with probability proportional to its weight among those left."""
    probability, left = 1.0, list(order)
    for item in order:
        probability *= weights[item] / sum(weights[j] for j in left)
        left.remove(item)
    return probability


def cosine(u: list[float], v: list[float]) -> float:
    return sum(a * b for a, b in zip(u, v, strict=True)) / math.sqrt(sum(a * a for a in u) * sum(b * b for b in v))


@pytest.mark.parametrize("batch", [2, 3])
def test_partial_pl_is_the_plackett_luce_marginal(batch):
    generator = torch.Generator().manual_seed(batch)
    queries, preferred, dispreferred = (torch.randn(batch, 4, generator=generator) for _ in range(3))
    candidates = [*preferred.tolist(), *dispreferred.tolist()]
    losses = []
    for i, query in enumerate(queries.tolist()):
        weights = [math.exp(cosine(query, c) / TAU) for c in candidates]
        orders = list(itertools.permutations(range(2 * batch)))
        assert sum(plackett_luce(weights, order) for order in orders) == pytest.approx(1.0)
        marginal = sum(plackett_luce(weights, o) for o in orders if o[:2] == (i, batch + i))
        losses.append(-math.log(marginal))
    expected = sum(losses) / batch
    assert partial_pl_loss(queries, preferred, dispreferred, TAU).item() == pytest.approx(expected, rel=1e-5)


def test_partial_pl_gradient_signs():
    # columns: c+1, c+2, c−1, c−2.  Query 1's c− is far below the others, query 2's far above them.
    scores = torch.tensor([[3.0, 1.0, -4.0, 1.0], [-3.0, 3.0, -3.0, 2.5]], requires_grad=True)
    partial_pl_from_scores(scores).backward()
    grad = scores.grad
    assert grad[0, 0] < 0 and grad[1, 1] < 0  # c+ always pulled up
    assert grad[0, 1] > 0 and grad[0, 3] > 0 and grad[1, 0] > 0 and grad[1, 2] > 0  # in-batch others pushed down
    assert grad[0, 2] < 0 < grad[1, 3]  # c− pulled towards second place: up from below the others, down from above


# --- Bradley–Terry ---


def test_bt_by_hand():
    queries = t((1.0, 0.0), (0.0, 1.0))
    preferred = t((1.0, 0.0), (0.8, 0.6))
    dispreferred = t((0.6, 0.8), (0.6, 0.8))
    # q1: s+ − s− = (1 − .6) / TAU;  q2: (.6 − .8) / TAU;  −log σ(x) = log(1 + exp(−x))
    loss_1 = math.log(1 + math.exp(-(1 - 0.6) / TAU))
    loss_2 = math.log(1 + math.exp(-(0.6 - 0.8) / TAU))
    assert bt_loss(queries, preferred, dispreferred, TAU).item() == pytest.approx((loss_1 + loss_2) / 2)


def test_bt_gradient_signs():
    preferred = torch.tensor([1.0, -2.0], requires_grad=True)
    dispreferred = torch.tensor([0.5, 3.0], requires_grad=True)
    bt_from_scores(preferred, dispreferred).backward()
    assert (preferred.grad < 0).all() and (dispreferred.grad > 0).all()


# --- sentence-transformers modules ---


@pytest.fixture(scope="module")
def encoder(tiny_encoder):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(tiny_encoder, device="cpu").eval()  # eval: no dropout, so losses are comparable


QUERIES = ["why do cats purr", "how is honey made", "what do dogs eat"]
POSITIVES = ["cats purr when content", "bees make honey from nectar", "dogs eat meat and kibble"]
NEGATIVES = ["the stock market fell", "rain is wet", "purring engines"]


@pytest.mark.parametrize("columns", [[QUERIES, POSITIVES], [QUERIES, POSITIVES, NEGATIVES, NEGATIVES[::-1]]])
def test_mnrl_equals_sentence_transformers(encoder, columns):
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    ours = MNRLLoss(encoder, tau=0.05)([encoder.preprocess(c) for c in columns], None)
    theirs = MultipleNegativesRankingLoss(encoder, scale=20.0)([encoder.preprocess(c) for c in columns], None)
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-5, abs=1e-6)


def test_snn_module_masks_empty_items(encoder):
    loss = SNNLoss(encoder, tau=0.05, num_positives=2)
    positives_2 = ["purring is a sign of comfort", "", ""]
    negatives_1 = ["", "rain is wet", "purring engines"]
    columns = [QUERIES, POSITIVES, positives_2, negatives_1, ["", "", ""]]
    actual = loss([encoder.preprocess(c) for c in columns], None)
    embedded = [encoder(encoder.preprocess(c))["sentence_embedding"] for c in columns]  # "" embedded, then masked
    present = [torch.tensor([text != "" for text in c]) for c in columns]
    expected = snn_loss(
        embedded[0],
        torch.stack(embedded[1:3], dim=1),
        torch.stack(present[1:3], dim=1),
        torch.stack(embedded[3:], dim=1),
        torch.stack(present[3:], dim=1),
        tau=0.05,
    )
    assert actual.item() == pytest.approx(expected.item(), rel=1e-5)
    for prompt in (None, "query: "):
        features = encoder.preprocess(["", "a", "a longer text"], prompt=prompt)
        assert loss.absent(features).tolist() == [True, False, False]


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_modules_return_a_scalar_with_grad(encoder, name):
    loss = make_loss(name, encoder, tau=0.05)
    columns = [QUERIES, POSITIVES, ["", *NEGATIVES[1:]] if name == "snn" else NEGATIVES]
    value = loss([encoder.preprocess(c) for c in columns], None)
    assert value.dim() == 0 and value.requires_grad and torch.isfinite(value)
    encoder.zero_grad()
    value.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in encoder.parameters())
    encoder.zero_grad()
    assert loss.get_config_dict()["tau"] == 0.05 and "@" in loss.citation


def test_make_loss_rejects_bad_settings(encoder):
    with pytest.raises(ConfigError, match="unknown loss 'triplet'"):
        make_loss("triplet", encoder)
    with pytest.raises(ConfigError, match="tau must be positive"):
        make_loss("mnrl", encoder, tau=0.0)
    assert make_loss("snn", encoder, num_positives=3).get_config_dict() == {"tau": 0.05, "num_positives": 3}
    with pytest.raises(ValueError, match="expects 3 input columns"):
        make_loss("bt", encoder)([encoder.preprocess(QUERIES)] * 2, None)
