"""Contrastive and preference losses for dense retriever training.

Each loss comes as a pure function on embeddings (plus a `*_from_scores` core on the scaled similarity matrix)
and as a sentence-transformers loss module. Similarity is cosine / tau throughout.

    mnrl        InfoNCE with in-batch and hard negatives (= sentence-transformers MultipleNegativesRankingLoss)
    snn         Syntriever's soft-nearest-neighbour loss: several positives per query, absent items masked
    partial_pl  partial Plackett–Luce: c+ ranked first and c− second among the whole batch's candidates
    bt          Bradley–Terry: σ(s+ − s−), no in-batch terms
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import ConfigError

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

DEFAULT_TAU = 0.05

SYNTRIEVER_CITATION = """
@inproceedings{kim2025syntriever,
    title={Syntriever: How to Train Your Retriever with Synthetic Data from LLMs},
    author={Minsang Kim and Seungjun Baek},
    booktitle={Findings of the Association for Computational Linguistics: NAACL 2025},
    year={2025},
    eprint={2502.03824},
    archivePrefix={arXiv},
    url={https://arxiv.org/abs/2502.03824},
}
"""

INFONCE_CITATION = """
@misc{oord2019representationlearningcontrastivepredictive,
    title={Representation Learning with Contrastive Predictive Coding},
    author={Aaron van den Oord and Yazhe Li and Oriol Vinyals},
    year={2019},
    eprint={1807.03748},
    archivePrefix={arXiv},
    url={https://arxiv.org/abs/1807.03748},
}
"""


def similarity(queries: Tensor, docs: Tensor, tau: float = DEFAULT_TAU) -> Tensor:
    """Cosine similarity / tau: [B, d] x [M, d] -> [B, M]."""
    return F.normalize(queries, dim=-1) @ F.normalize(docs, dim=-1).T / tau


# --- score-level cores: `scores` are already cosine / tau ---


def mnrl_from_scores(scores: Tensor) -> Tensor:
    """[B, M] scores whose column i is query i's positive (the rest are negatives) -> mean −log softmax."""
    return F.cross_entropy(scores, torch.arange(scores.shape[0], device=scores.device))


def snn_from_scores(scores: Tensor, positive: Tensor, valid: Tensor) -> Tensor:
    """[B, M] scores; `positive` [B, M] marks each query's own positives, `valid` [M] the present candidates.

    loss_i = −log(Σ_own positives exp(s) / Σ_all valid candidates exp(s)); queries without a positive are left out.
    """
    positive = positive & valid
    has_positive = positive.any(dim=1)
    if not has_positive.any():
        return scores.sum() * 0.0
    rows = scores[has_positive]
    numerator = rows.masked_fill(~positive[has_positive], float("-inf")).logsumexp(dim=1)
    denominator = rows.masked_fill(~valid, float("-inf")).logsumexp(dim=1)
    return (denominator - numerator).mean()


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


# --- embedding-level losses ---


def mnrl_loss(queries: Tensor, positives: Tensor, negatives: Tensor | None = None, tau: float = DEFAULT_TAU) -> Tensor:
    """InfoNCE: queries [B, d], positives [B, d], optional hard negatives [B, H, d]; every query is scored against
    all B positives and all B*H negatives."""
    docs = positives if negatives is None else torch.cat([positives, negatives.flatten(0, 1)])
    return mnrl_from_scores(similarity(queries, docs, tau))


def snn_loss(
    queries: Tensor,
    pos: Tensor,
    pos_mask: Tensor | None = None,
    neg: Tensor | None = None,
    neg_mask: Tensor | None = None,
    tau: float = DEFAULT_TAU,
) -> Tensor:
    """Soft-nearest-neighbour loss: queries [B, d], pos [B, P, d], neg [B, N, d]; masks [B, P] / [B, N] mark
    present items (None: all present). Other queries' positives and every negative only enter denominators."""
    batch, n_pos, dim = pos.shape
    pos_mask = pos.new_ones(batch, n_pos, dtype=torch.bool) if pos_mask is None else pos_mask.bool()
    if neg is None:
        neg = pos.new_zeros(batch, 0, dim)
    neg_mask = neg.new_ones(neg.shape[:2], dtype=torch.bool) if neg_mask is None else neg_mask.bool()
    candidates = torch.cat([pos.flatten(0, 1), neg.flatten(0, 1)])
    valid = torch.cat([pos_mask.flatten(), neg_mask.flatten()])
    candidates = torch.where(valid[:, None], candidates, 0.0)  # absent items cannot leak, not even NaNs
    owner = torch.arange(batch, device=pos.device).repeat_interleave(n_pos)
    own = owner[None, :] == torch.arange(batch, device=pos.device)[:, None]
    positive = torch.cat([own, own.new_zeros(batch, neg_mask.numel())], dim=1)
    return snn_from_scores(similarity(queries, candidates, tau), positive, valid)


def partial_pl_loss(queries: Tensor, preferred: Tensor, dispreferred: Tensor, tau: float = DEFAULT_TAU) -> Tensor:
    """Partial Plackett–Luce over the batch: queries, preferred c+, dispreferred c− all [B, d]."""
    return partial_pl_from_scores(similarity(queries, torch.cat([preferred, dispreferred]), tau))


def bt_loss(queries: Tensor, preferred: Tensor, dispreferred: Tensor, tau: float = DEFAULT_TAU) -> Tensor:
    """Bradley–Terry on each query's own pair: queries, preferred, dispreferred all [B, d]."""
    q = F.normalize(queries, dim=-1)
    s_pos = (q * F.normalize(preferred, dim=-1)).sum(-1) / tau
    s_neg = (q * F.normalize(dispreferred, dim=-1)).sum(-1) / tau
    return bt_from_scores(s_pos, s_neg)


# --- sentence-transformers loss modules ---


class _EmbeddingLoss(nn.Module):
    """Shared plumbing: the model, tau, and embedding one tokenized column."""

    def __init__(self, model: SentenceTransformer, tau: float = DEFAULT_TAU) -> None:
        super().__init__()
        if not tau > 0:
            raise ValueError(f"tau must be positive, got {tau}")
        self.model = model
        self.tau = tau

    def embed(self, features: dict[str, Tensor]) -> Tensor:
        return self.model(features)["sentence_embedding"]

    def columns(
        self, sentence_features: Iterable[dict[str, Tensor]], least: int, most: int | None = None
    ) -> list[dict[str, Tensor]]:
        features = list(sentence_features)
        if len(features) < least or (most is not None and len(features) > most):
            expected = f"{least}" if most == least else f"at least {least}" if most is None else f"{least}-{most}"
            raise ValueError(f"{type(self).__name__} expects {expected} input columns, got {len(features)}")
        return features

    def get_config_dict(self) -> dict[str, Any]:
        return {"tau": self.tau}

    @property
    def citation(self) -> str:
        return SYNTRIEVER_CITATION


class MNRLLoss(_EmbeddingLoss):
    """InfoNCE on (query, positive, negative_1..negative_H) columns; labels are ignored."""

    def forward(self, sentence_features: Iterable[dict[str, Tensor]], labels: Tensor | None = None) -> Tensor:
        queries, positives, *negatives = (self.embed(f) for f in self.columns(sentence_features, 2))
        hard = torch.stack(negatives, dim=1) if negatives else None
        return mnrl_loss(queries, positives, hard, self.tau)

    @property
    def citation(self) -> str:
        return INFONCE_CITATION


class SNNLoss(_EmbeddingLoss):
    """Soft-nearest-neighbour loss on (query, pos_1..pos_P, neg_1..neg_N) columns; "" marks an absent item.

    Absent items are not embedded. They are found from the tokenized batch: a row with no tokens beyond the
    special ones (and the column prompt, if any) holds the empty string.
    """

    def __init__(self, model: SentenceTransformer, tau: float = DEFAULT_TAU, num_positives: int = 1) -> None:
        super().__init__(model, tau)
        if num_positives < 1:
            raise ValueError(f"num_positives must be at least 1, got {num_positives}")
        self.num_positives = num_positives
        self._empty: tuple[int, int] | None = None  # (tokens of "", trailing special tokens after a prompt)

    def forward(self, sentence_features: Iterable[dict[str, Tensor]], labels: Tensor | None = None) -> Tensor:
        query_features, *items = self.columns(sentence_features, 1 + self.num_positives)
        queries = self.embed(query_features)
        pos, pos_mask = self.embed_items(items[: self.num_positives], queries)
        neg, neg_mask = self.embed_items(items[self.num_positives :], queries)
        return snn_loss(queries, pos, pos_mask, neg, neg_mask, self.tau)

    def embed_items(self, columns: list[dict[str, Tensor]], like: Tensor) -> tuple[Tensor, Tensor]:
        """[B, K, d] embeddings (zeros where absent) and the [B, K] presence mask of K item columns."""
        batch, dim = like.shape
        embeddings, masks = [], []
        for features in columns:
            present = ~self.absent(features)
            column = like.new_zeros(batch, dim)
            if present.any():
                rows = present.nonzero().squeeze(1)
                kept = self.embed(_take_rows(features, present))
                column = column.to(kept.dtype).index_put((rows,), kept)
            embeddings.append(column)
            masks.append(present)
        if not columns:
            return like.new_zeros(batch, 0, dim), torch.zeros(batch, 0, dtype=torch.bool, device=like.device)
        return torch.stack(embeddings, dim=1), torch.stack(masks, dim=1)

    def absent(self, features: dict[str, Tensor]) -> Tensor:
        """[B] bool: rows that tokenize like the empty string."""
        if "attention_mask" not in features:
            raise ValueError("SNNLoss finds absent ('') items by their attention_mask, which these features lack")
        if self._empty is None:
            empty = self.model.preprocess([""])
            ids = empty["input_ids"][0][empty["attention_mask"][0].bool()].tolist()
            bos = getattr(self.model.tokenizer, "bos_token_id", None)
            self._empty = (len(ids), int(bool(ids) and ids[-1] != bos))
        n_tokens = features["attention_mask"].sum(dim=1)
        prompt_length = features.get("prompt_length")
        if prompt_length is None:
            return n_tokens <= self._empty[0]
        prompt_length = int(prompt_length.flatten()[0]) if isinstance(prompt_length, Tensor) else int(prompt_length)
        return n_tokens <= prompt_length + self._empty[1]

    def get_config_dict(self) -> dict[str, Any]:
        return {"tau": self.tau, "num_positives": self.num_positives}


class PartialPLLoss(_EmbeddingLoss):
    """Partial Plackett–Luce on (query, preferred, dispreferred) columns; labels are ignored."""

    def forward(self, sentence_features: Iterable[dict[str, Tensor]], labels: Tensor | None = None) -> Tensor:
        queries, preferred, dispreferred = (self.embed(f) for f in self.columns(sentence_features, 3, 3))
        return partial_pl_loss(queries, preferred, dispreferred, self.tau)


class BTLoss(_EmbeddingLoss):
    """Bradley–Terry on (query, preferred, dispreferred) columns; labels are ignored."""

    def forward(self, sentence_features: Iterable[dict[str, Tensor]], labels: Tensor | None = None) -> Tensor:
        queries, preferred, dispreferred = (self.embed(f) for f in self.columns(sentence_features, 3, 3))
        return bt_loss(queries, preferred, dispreferred, self.tau)

    @property
    def citation(self) -> str:
        return """
@article{bradley1952rank,
    title={Rank Analysis of Incomplete Block Designs: I. The Method of Paired Comparisons},
    author={Ralph Allan Bradley and Milton E. Terry},
    journal={Biometrika},
    volume={39},
    number={3/4},
    pages={324--345},
    year={1952},
}
"""


LOSSES: dict[str, type[_EmbeddingLoss]] = {"mnrl": MNRLLoss, "snn": SNNLoss, "partial_pl": PartialPLLoss, "bt": BTLoss}


def make_loss(name: str, model: SentenceTransformer, tau: float = DEFAULT_TAU, **kwargs: Any) -> nn.Module:
    """The loss module registered as `name`; extra keyword arguments go to its constructor (e.g. num_positives)."""
    if name not in LOSSES:
        raise ConfigError(f"unknown loss '{name}'; choose one of {sorted(LOSSES)}")
    if not tau > 0:
        raise ConfigError(f"loss tau must be positive, got {tau}")
    return LOSSES[name](model, tau=tau, **kwargs)


def _take_rows(features: dict[str, Any], keep: Tensor) -> dict[str, Any]:
    """The rows `keep` of a tokenized batch; per-batch entries (modality, prompt_length) are kept as they are."""
    batch = keep.shape[0]
    return {
        key: value[keep] if isinstance(value, Tensor) and value.dim() > 0 and value.shape[0] == batch else value
        for key, value in features.items()
    }
