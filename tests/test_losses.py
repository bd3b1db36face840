import itertools
import math

import pytest
import torch

from synthir.training.losses import (
    LOSSES,
    batch_loss,
    bt,
    bt_from_scores,
    mnrl,
    mnrl_from_scores,
    partial_pl,
    partial_pl_from_scores,
    similarity,
    snn,
    snn_from_scores,
)

pytestmark = pytest.mark.usefixtures("one_thread")

TAU = 0.5


def t(*rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64)


def e(cos: float) -> float:
    """exp(cosine / TAU)"""
    return math.exp(cos / TAU)


# --- mnrl ---


def test_mnrl_by_hand():
    queries = t((3.0, 0.0), (0.0, 1.0))  # unnormalised on purpose: similarity is cosine
    # passages: p1, h1, p2, h2 (each query's positive, then its hard negative)
    passages = t((1.0, 0.0), (0.8, 0.6), (0.6, 0.8), (-1.0, 0.0))
    # q1 · (p1, p2, h1, h2) = (1, .6, .8, -1);  q2 · (p1, p2, h1, h2) = (0, .8, .6, 0)
    loss_1 = -math.log(e(1) / (e(1) + e(0.6) + e(0.8) + e(-1)))
    loss_2 = -math.log(e(0.8) / (e(0) + e(0.8) + e(0.6) + e(0)))
    assert mnrl(queries, passages, [[0], [2]], [[1], [3]], TAU).item() == pytest.approx((loss_1 + loss_2) / 2)
    in_batch_only = (-math.log(e(1) / (e(1) + e(0.6))) - math.log(e(0.8) / (e(0) + e(0.8)))) / 2
    assert mnrl(queries, passages[[0, 2]], [[0], [1]], [[], []], TAU).item() == pytest.approx(in_batch_only)


def test_mnrl_gradient_signs():
    scores = torch.tensor([[2.0, 1.0, 0.5], [0.3, 1.5, -1.0]], requires_grad=True)  # column i = positive of i
    mnrl_from_scores(scores).backward()
    own = torch.eye(2, 3, dtype=torch.bool)
    assert (scores.grad[own] < 0).all() and (scores.grad[~own] > 0).all()


# --- snn ---


def snn_batch() -> tuple[torch.Tensor, torch.Tensor, list[list[int]], list[list[int]]]:
    """3 queries; query 1 has two positives and a negative, query 2 one positive, query 3 only a negative."""
    queries = t((1.0, 0.0), (0.0, 1.0), (0.6, 0.8))
    # a=(1,0), b=(.6,.8) [q1's positives], d=(.8,-.6) [q1's negative], c=(0,1) [q2's positive], e=(0,-1) [q3's neg]
    passages = t((1.0, 0.0), (0.6, 0.8), (0.8, -0.6), (0.0, 1.0), (0.0, -1.0))
    return queries, passages, [[0, 1], [3], []], [[2], [], [4]]


def test_snn_by_hand():
    # q1 · (a, b, c, d, e) = (1, .6, 0, .8, 0);  q2 · (a, b, c, d, e) = (0, .8, 1, -.6, -1);  q3 has no positive
    loss_1 = -math.log((e(1) + e(0.6)) / (e(1) + e(0.6) + e(0) + e(0.8) + e(0)))
    loss_2 = -math.log(e(1) / (e(0) + e(0.8) + e(1) + e(-0.6) + e(-1)))
    assert snn(*snn_batch(), TAU).item() == pytest.approx((loss_1 + loss_2) / 2)


def test_a_query_without_positive_adds_nothing_to_snn():
    queries, passages, positives, negatives = snn_batch()
    queries.requires_grad_(True)
    snn(queries, passages, positives, negatives, TAU).backward()
    assert (queries.grad[2] == 0).all()


def test_snn_with_one_positive_each_is_mnrl():
    generator = torch.Generator().manual_seed(0)
    queries, passages = torch.randn(3, 4, generator=generator), torch.randn(9, 4, generator=generator)
    positives, negatives = [[0], [3], [6]], [[1, 2], [4, 5], [7, 8]]
    assert snn(queries, passages, positives, negatives, TAU).item() == pytest.approx(
        mnrl(queries, passages, positives, negatives, TAU).item()
    )


def test_snn_gradient_signs():
    # candidates: q1's two positives, q2's positive, q1's negative, q2's (absent) negative
    scores = torch.tensor([[2.0, 1.0, 0.5, 0.7], [0.1, 0.2, 1.5, -0.3]], requires_grad=True)
    positive = torch.tensor([[True, True, False, False], [False, False, True, False]])
    snn_from_scores(scores, positive).backward()
    assert (scores.grad[positive] < 0).all()
    assert (scores.grad[~positive] > 0).all()  # other queries' positives and all negatives repel


def test_snn_without_any_positive_is_zero_with_grad():
    scores = torch.zeros(2, 3, requires_grad=True)
    loss = snn_from_scores(scores, torch.zeros(2, 3, dtype=torch.bool))
    assert loss.item() == 0 and loss.requires_grad


# --- partial Plackett–Luce ---


def pair_loss(loss, queries, preferred, dispreferred) -> torch.Tensor:
    """An alignment loss on (query, c+, c−) rows: passages c+_1, c−_1, c+_2, c−_2, ..."""
    passages = torch.stack([preferred, dispreferred], dim=1).flatten(0, 1)
    rows = range(queries.shape[0])
    return loss(queries, passages, [[2 * i] for i in rows], [[2 * i + 1] for i in rows], TAU)


def test_partial_pl_by_hand():
    queries = t((1.0, 0.0), (0.0, 1.0))
    preferred = t((1.0, 0.0), (0.0, 1.0))
    dispreferred = t((0.6, 0.8), (-0.6, 0.8))
    # q1: c+1 = 1, c−1 = .6, others (c+2, c−2) = (0, -.6);  q2: c+2 = 1, c−2 = .8, others (c+1, c−1) = (0, .8)
    p_1 = e(1) / (e(1) + e(0.6) + e(0) + e(-0.6)) * e(0.6) / (e(0.6) + e(0) + e(-0.6))
    p_2 = e(1) / (e(1) + e(0.8) + e(0) + e(0.8)) * e(0.8) / (e(0.8) + e(0) + e(0.8))
    expected = (-math.log(p_1) - math.log(p_2)) / 2
    assert pair_loss(partial_pl, queries, preferred, dispreferred).item() == pytest.approx(expected)


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
    assert pair_loss(partial_pl, queries, preferred, dispreferred).item() == pytest.approx(expected, rel=1e-5)


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
    assert pair_loss(bt, queries, preferred, dispreferred).item() == pytest.approx((loss_1 + loss_2) / 2)


def test_bt_gradient_signs():
    preferred = torch.tensor([1.0, -2.0], requires_grad=True)
    dispreferred = torch.tensor([0.5, 3.0], requires_grad=True)
    bt_from_scores(preferred, dispreferred).backward()
    assert (preferred.grad < 0).all() and (dispreferred.grad > 0).all()


# --- the batch losses as training calls them ---


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

    embed = lambda texts: encoder(encoder.preprocess(texts))["sentence_embedding"]  # noqa: E731
    queries, *passage_columns = columns
    rows = [[column[i] for column in passage_columns] for i in range(len(queries))]  # per query: +, negatives
    width = len(passage_columns)
    positives = [[width * i] for i in range(len(queries))]
    negatives = [list(range(width * i + 1, width * (i + 1))) for i in range(len(queries))]
    ours = mnrl(embed(queries), embed([text for row in rows for text in row]), positives, negatives, 0.05)
    theirs = MultipleNegativesRankingLoss(encoder, scale=20.0)([encoder.preprocess(c) for c in columns], None)
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-5, abs=1e-6)


def by_hand(name: str, queries: list[list[float]], passages: list[list[float]], margins: list[float]) -> float:
    """Each loss on query i with positive 2i and negative 2i + 1, at tau 0.05, from its formula in plain floats."""
    cos = [[cosine(q, p) for p in passages] for q in queries]
    weight = [[math.exp(c / 0.05) for c in row] for row in cos]
    losses = []
    for i, w in enumerate(weight):
        positive, negative = 2 * i, 2 * i + 1
        if name in ("mnrl", "snn"):  # one positive each: both are softmax over every passage of the batch
            losses.append(-math.log(w[positive] / sum(w)))
        elif name == "partial_pl":  # c+ first among every candidate, then c− first among the rest
            losses.append(-math.log(w[positive] / sum(w) * w[negative] / (sum(w) - w[positive])))
        elif name == "bt":
            losses.append(math.log(1 + math.exp(-(cos[i][positive] - cos[i][negative]) / 0.05)))
        elif name == "listwise":  # KL over (c+, c−): teacher logits (0, −margin) / 0.05, student cosines / 0.05
            teacher = 1 / (1 + math.exp(-margins[i] / 0.05))  # the teacher's P(c+) among the two
            student = 1 / (1 + math.exp(-(cos[i][positive] - cos[i][negative]) / 0.05))
            losses.append(sum(p * math.log(p / q) for p, q in ((teacher, student), (1 - teacher, 1 - student))))
        else:  # marginmse: cosine margin against the teacher's
            losses.append((cos[i][positive] - cos[i][negative] - margins[i]) ** 2)
    return sum(losses) / len(losses)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_every_loss_gives_a_scalar_with_grad_through_the_encoder(encoder, name):
    texts = [text for pair in zip(POSITIVES, NEGATIVES, strict=True) for text in pair]
    queries = encoder(encoder.preprocess(QUERIES))["sentence_embedding"]
    passages = encoder(encoder.preprocess(texts))["sentence_embedding"]
    value = batch_loss(name, 0.05)(queries, passages, [[0], [2], [4]], [[1], [3], [5]], [[0.3], [0.1], [0.2]])
    assert value.dim() == 0
    expected = by_hand(name, queries.tolist(), passages.tolist(), [0.3, 0.1, 0.2])
    assert value.item() == pytest.approx(expected, rel=1e-4)
    encoder.zero_grad()
    value.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in encoder.parameters())
    encoder.zero_grad()


def test_batch_loss_rejects_bad_settings():
    with pytest.raises(ValueError, match="unknown loss 'triplet'"):
        batch_loss("triplet", 0.05)
    with pytest.raises(ValueError, match="tau must be positive"):
        batch_loss("mnrl", 0.0)
    q, p = torch.randn(2, 4), torch.randn(3, 4)
    with pytest.raises(ValueError, match="rejected passage"):
        batch_loss("bt", 0.05)(q, p, [[0], [1]], [[2], []])


def test_marginmse_by_hand():
    from synthir.training.losses import marginmse

    queries = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    passages = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 3.0], [1.0, 1.0], [2.0, 0.0]])
    # query 0: positive 0 (cos 1), negatives 1 (cos 0) and 3 (cos 1/sqrt 2); query 1: positive 2 (1), negative 4 (0)
    value = marginmse(queries, passages, [[0], [2]], [[1, 3], [4]], [[0.5, 0.2], [1.0]])
    student = [1.0, 1 - 2**-0.5, 1.0]
    teacher = [0.5, 0.2, 1.0]
    expected = sum((s - t) ** 2 for s, t in zip(student, teacher, strict=True)) / 3
    assert value.item() == pytest.approx(expected)
    assert marginmse(queries, passages, [[0], [2]], [[], []], [[], []]).item() == 0.0  # no negative, no term


# --- listwise distillation ---

STUDENT_TAU, TEACHER_TAU = 0.5, 0.25


def listwise_batch() -> tuple[torch.Tensor, torch.Tensor, list[list[int]], list[list[int]]]:
    """2 queries, 3 candidates each (first positive, two negatives), vectors unnormalised on purpose.
    q0 = (1, 0): cosines 0.8, 0.6, 0.0 with passages 0, 1, 2;  q1 = (0, 1): 0.96, 0.0, 0.6 with passages 3, 4, 5."""
    queries = t((3.0, 0.0), (0.0, 0.5))
    passages = t((0.8, 0.6), (0.6, 0.8), (0.0, 2.0), (0.28, 0.96), (5.0, 0.0), (1.6, 1.2))
    return queries, passages, [[0], [3]], [[1, 2], [4, 5]]


def softmax(logits: list[float]) -> list[float]:
    weights = [math.exp(x) for x in logits]
    return [w / sum(weights) for w in weights]


def kl(p: list[float], q: list[float]) -> float:
    return sum(a * math.log(a / b) for a, b in zip(p, q, strict=True))


def test_listwise_by_hand():
    from synthir.training.losses import listwise

    # the teacher's raw scores: q0 (0.9, 0.7, 0.2), q1 (0.5, 0.6, 0.1); the loss sees their margins positive − negative
    margins = [[0.2, 0.7], [-0.1, 0.4]]
    value = listwise(*listwise_batch(), margins, tau=STUDENT_TAU, teacher_temperature=TEACHER_TAU)
    teacher_0 = softmax([0.9 / TEACHER_TAU, 0.7 / TEACHER_TAU, 0.2 / TEACHER_TAU])  # 0.662191, 0.297541, 0.040268
    student_0 = softmax([0.8 / STUDENT_TAU, 0.6 / STUDENT_TAU, 0.0 / STUDENT_TAU])  # 0.534126, 0.358036, 0.107838
    teacher_1 = softmax([0.5 / TEACHER_TAU, 0.6 / TEACHER_TAU, 0.1 / TEACHER_TAU])  # 0.371234, 0.553816, 0.074951
    student_1 = softmax([0.96 / STUDENT_TAU, 0.0 / STUDENT_TAU, 0.6 / STUDENT_TAU])  # 0.612235, 0.089758, 0.298007
    expected = (kl(teacher_0, student_0) + kl(teacher_1, student_1)) / 2  # (0.0475833 + 0.7186106) / 2
    assert expected == pytest.approx(0.3830969, abs=1e-7)
    assert value.item() == pytest.approx(expected, rel=1e-12)


def test_listwise_is_zero_where_the_student_already_matches_the_teacher():
    from synthir.training.losses import listwise

    queries, passages, positives, negatives = listwise_batch()
    queries.requires_grad_(True)
    student_margins = [[0.8 - 0.6, 0.8 - 0.0], [0.96 - 0.0, 0.96 - 0.6]]
    same = listwise(queries, passages, positives, negatives, student_margins, tau=0.5, teacher_temperature=0.5)
    same.backward()
    assert same.item() == pytest.approx(0.0, abs=1e-12) and queries.grad.abs().max() < 1e-12
    doubled = [[2 * m for m in row] for row in student_margins]  # twice the margins at twice the temperature
    assert listwise(*listwise_batch(), doubled, tau=0.5, teacher_temperature=1.0).item() == pytest.approx(0, abs=1e-12)
    assert listwise(*listwise_batch(), doubled, tau=0.5, teacher_temperature=0.5).item() > 0.01


def test_listwise_gradient_pulls_each_candidate_towards_the_teachers_probability():
    from synthir.training.losses import listwise_from_scores

    student = torch.tensor([[1.0, 2.0, 0.0], [0.5, 0.5, -1.0]], dtype=torch.float64, requires_grad=True)
    teacher = torch.tensor([[3.0, 1.0, 0.0], [0.0, 2.0, 0.0]], dtype=torch.float64)
    listwise_from_scores(student, teacher, torch.ones(2, 3, dtype=torch.bool)).backward()
    expected = (student.detach().softmax(dim=1) - teacher.softmax(dim=1)) / 2  # ∂KL/∂s = p_student − p_teacher
    torch.testing.assert_close(student.grad, expected)
    under = teacher.softmax(dim=1) > student.detach().softmax(dim=1)  # the student gives these too little
    assert (student.grad[under] < 0).all() and (student.grad[~under] > 0).all()  # descent raises them, lowers the rest


def test_listwise_step_on_the_embeddings_lowers_the_loss():
    from synthir.training.losses import listwise

    queries, passages, positives, negatives = listwise_batch()
    queries.requires_grad_(True)
    margins = [[0.2, 0.7], [-0.1, 0.4]]
    before = listwise(queries, passages, positives, negatives, margins, 0.5, 0.25)
    before.backward()
    after = listwise(queries.detach() - 0.1 * queries.grad, passages, positives, negatives, margins, 0.5, 0.25)
    assert after.item() < before.item()


def test_listwise_lists_of_different_lengths_average_the_queries_that_have_negatives():
    from synthir.training.losses import listwise

    queries, passages, _, _ = listwise_batch()
    queries = torch.cat([queries, t((1.0, 1.0))]).requires_grad_(True)
    positives, negatives, margins = [[0], [3], [5]], [[1, 2], [4], []], [[0.2, 0.7], [-0.1], []]
    value = listwise(queries, passages, positives, negatives, margins, 0.5, 0.25)
    value.backward()
    first = kl(softmax([0.9 / 0.25, 0.7 / 0.25, 0.2 / 0.25]), softmax([0.8 / 0.5, 0.6 / 0.5, 0.0 / 0.5]))
    second = kl(softmax([0.5 / 0.25, 0.6 / 0.25]), softmax([0.96 / 0.5, 0.0 / 0.5]))  # one negative: no padding
    assert value.item() == pytest.approx((first + second) / 2, rel=1e-12)  # the query without negatives is left out
    assert torch.isfinite(queries.grad).all() and (queries.grad[2] == 0).all()
    assert listwise(queries, passages, [[0]], [[]], [[]], 0.5, 0.25).item() == 0.0  # nothing to distil
    with pytest.raises(ValueError, match="1 teacher margins for 2 negatives"):
        listwise(queries, passages, [[0]], [[1, 2]], [[0.2]], 0.5, 0.25)


def test_listwise_with_contrastive_weight_is_the_sum_of_its_parts():
    from synthir.training.losses import listwise

    queries, passages, positives, negatives = listwise_batch()
    margins = [[0.2, 0.7], [-0.1, 0.4]]
    combined = batch_loss("listwise", 0.5, teacher_temperature=0.25, contrastive_weight=0.3)
    parts = listwise(queries, passages, positives, negatives, margins, 0.5, 0.25) + 0.3 * mnrl(
        queries, passages, positives, negatives, 0.5
    )
    assert combined(queries, passages, positives, negatives, margins).item() == pytest.approx(parts.item(), rel=1e-12)
    alone = batch_loss("listwise", 0.5, teacher_temperature=0.25)(queries, passages, positives, negatives, margins)
    assert alone.item() == pytest.approx(0.3830969, abs=1e-7)  # weight 0: listwise alone (test_listwise_by_hand)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"teacher_temperature": 0.0}, "teacher_temperature must be positive and finite, got 0.0"),
        ({"teacher_temperature": -1.0}, "teacher_temperature must be positive"),
        ({"teacher_temperature": math.nan}, "teacher_temperature must be positive and finite, got nan"),
        ({"teacher_temperature": math.inf}, "teacher_temperature must be positive and finite, got inf"),
        ({"contrastive_weight": -0.1}, "contrastive_weight must be >= 0 and finite"),
        ({"contrastive_weight": math.nan}, "contrastive_weight must be >= 0 and finite, got nan"),
        ({"contrastive_weight": math.inf}, "contrastive_weight must be >= 0 and finite, got inf"),
    ],
)
def test_batch_loss_rejects_bad_distillation_settings(settings, message):
    with pytest.raises(ValueError, match=message):
        batch_loss("listwise", 0.05, **settings)


def test_the_loss_lists_agree_with_the_params_schema():
    from typing import get_args

    from synthir.config import DISTILLED, TrainParams
    from synthir.training.losses import STAGE1_LOSSES

    assert get_args(TrainParams.model_fields["loss"].annotation) == STAGE1_LOSSES
    assert set(DISTILLED) <= set(STAGE1_LOSSES)


# --- vectorised losses: the same values and gradients as the per-query code they replace ---


def per_query_mnrl(queries, passages, positives, negatives, tau):
    """mnrl as it was: the first positives moved to the front by list indexing."""
    first = [slots[0] for slots in positives]
    rest = [j for j in range(passages.shape[0]) if j not in set(first)]
    return mnrl_from_scores(similarity(queries, passages[first + rest], tau))


def per_query_snn(queries, passages, positives, negatives, tau):
    """snn as it was: the positives' mask filled one query at a time, rows without a positive dropped by a branch
    on a device value."""
    own = torch.zeros(queries.shape[0], passages.shape[0], dtype=torch.bool)
    for i, slots in enumerate(positives):
        own[i, slots] = True
    scores = similarity(queries, passages, tau)
    has_positive = own.any(dim=1)
    if not has_positive.any():
        return scores.sum() * 0.0
    rows = scores[has_positive]
    return (rows.logsumexp(dim=1) - rows.masked_fill(~own[has_positive], float("-inf")).logsumexp(dim=1)).mean()


def random_batch(seed: int, with_empty: bool):
    """A random batch laid out as training lays it out: per query 0-3 positives (at least one unless
    `with_empty`) then 0-2 negatives, each its own rows of the passage matrix."""
    generator = torch.Generator().manual_seed(seed)
    count = int(torch.randint(1, 9, (1,), generator=generator))
    positives, negatives, rows = [], [], 0
    for _ in range(count):
        own = int(torch.randint(0 if with_empty else 1, 4, (1,), generator=generator))
        other = int(torch.randint(0, 3, (1,), generator=generator))
        positives.append(list(range(rows, rows + own)))
        negatives.append(list(range(rows + own, rows + own + other)))
        rows += own + other
    queries = torch.randn(count, 8, generator=generator, dtype=torch.float64)
    passages = torch.randn(max(rows, 1), 8, generator=generator, dtype=torch.float64)
    return queries, passages, positives, negatives


@pytest.mark.parametrize("seed", range(20))
@pytest.mark.parametrize(("name", "old"), [("mnrl", per_query_mnrl), ("snn", per_query_snn)])
def test_vectorised_loss_equals_the_per_query_loss(seed, name, old):
    queries, passages, positives, negatives = random_batch(seed, with_empty=name == "snn")
    new_queries, new_passages = queries.clone().requires_grad_(), passages.clone().requires_grad_()
    old_queries, old_passages = queries.clone().requires_grad_(), passages.clone().requires_grad_()
    new = LOSSES[name](new_queries, new_passages, positives, negatives, TAU)
    reference = old(old_queries, old_passages, positives, negatives, TAU)
    torch.testing.assert_close(new, reference, rtol=1e-12, atol=1e-12)
    new.backward()
    reference.backward()
    torch.testing.assert_close(new_queries.grad, old_queries.grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(new_passages.grad, old_passages.grad, rtol=1e-10, atol=1e-12)


def test_snn_with_no_positive_anywhere_is_zero_with_a_zero_gradient():
    queries = torch.randn(3, 4, requires_grad=True)
    loss = snn(queries, torch.randn(5, 4), [[], [], []], [[0], [1, 2], [3]], TAU)
    loss.backward()
    assert loss.item() == 0 and (queries.grad == 0).all()


def test_host_copies_are_pinned_and_non_blocking_only_on_cuda(faked_cuda_copies):
    from synthir.training.losses import host_to_device

    faked = faked_cuda_copies
    host_to_device(torch.zeros(2), "cpu")
    assert faked.calls == [("to", "cpu", False)]  # the CPU: no pinning, an ordinary copy (a no-op)
    faked.calls.clear()
    host_to_device(torch.zeros(2), torch.device("cuda", 0))
    assert faked.calls == [("pin",), ("to", "cuda:0", True)]
