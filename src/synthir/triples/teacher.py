"""Teacher scores for distillation (GPL's Margin-MSE), in cosine units [0, 1] so that a margin between two
passages is on the student's scale.

    hybrid         reciprocal rank fusion of BM25 and the base retriever over the whole corpus, normalised so that
                   rank 1 in both is 1: (k + 1) / 2 * (1 / (k + r_bm25) + 1 / (k + r_dense)). Label-free, no LLM.
    cross_encoder  a sentence-transformers CrossEncoder (GPL's teacher, e.g. cross-encoder/ms-marco-MiniLM-L-6-v2;
                   online only: none ships offline): sigmoid of its raw relevance logit.
    llm            the offline cross-encoder: the LLM judge's P(yes) for the (query, passage) text, sigmoid of its
                   yes/no log-odds (llm/judge.py).

The cross-encoder's logit goes through a sigmoid, where GPL distils raw logit margins: GPL's student scores by
dot product, unbounded, so a margin of several logits is within its reach; ours is regressed on cosine margins,
within [-2, 2] and in practice under 1, and raw logit margins would be out of its reach and swamp the loss (a
fixed scale would need a per-model constant). The sigmoid reads the logit as the log-odds of relevance (the
activation sentence-transformers gives a one-logit cross-encoder by default, and the llm teacher's mapping of its
log-odds), lands in [0, 1] like the other teachers and keeps every pair's order. The raw logit is read whatever
activation the model's config declares (ms-marco's declare the identity, a plain classifier gets a sigmoid), so a score
never goes through two sigmoids. The price: margins between two passages both far from the boundary shrink
(logits 8 and 12 differ by 0.0003 after it), so the student learns mostly from the teacher's uncertain pairs.

Each example gets `teacher = {"method", "positive", "negatives"}`: the score of its first positive and of each
negative, in order. The pair teachers (cross_encoder, llm) score any text, generated negatives included; hybrid
ranks corpus documents only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from ..beir import Corpus, passage_text
from ..errors import ConfigError
from .negatives import ScoreRows, load_cross_encoder
from .supervision import corpus_ranks, normalised_fusion


def hybrid_scores(examples: list[dict], corpus: Corpus, bm25: ScoreRows, dense: ScoreRows, chunk: int = 256) -> None:
    """Set each example's `teacher` from the fused ranks of its first positive and its negatives among the corpus
    (every one must be a corpus document)."""
    position = {doc_id: i for i, doc_id in enumerate(corpus)}
    for start in range(0, len(examples), chunk):
        batch = examples[start : start + chunk]
        queries = [e["query"] for e in batch]
        for example, lexical, semantic in zip(batch, bm25(queries), dense(queries), strict=True):
            ids = [example["positive_ids"][0], *example["negative_ids"]]
            missing = [d for d in ids if d not in position]
            if missing:
                raise ConfigError(
                    f"triples.teacher.method: hybrid ranks corpus documents, and example {example['query_id']} has "
                    f"'{missing[0]}' (generated text); use the llm teacher, or mined negatives"
                )
            if example["positives"][0] != passage_text(corpus[ids[0]]):
                raise ConfigError(
                    f"triples.teacher.method: hybrid ranks corpus documents, and example {example['query_id']}'s "
                    "positive is not its document's text (a sentence cut out: triples.cropped.remove_from_positive); "
                    "use the llm teacher for such examples"
                )
            columns = [position[d] for d in ids]
            fused = normalised_fusion(np.stack([corpus_ranks(lexical)[columns], corpus_ranks(semantic)[columns]]))
            scores = [round(float(score), 6) for score in fused]
            example["teacher"] = {"method": "hybrid", "positive": scores[0], "negatives": scores[1:]}


PairLogits = Callable[[list[tuple[str, str]]], Sequence[float]]
"""(query, passage) pairs -> one relevance logit (or log-odds) per pair."""


def sigmoid_scores(examples: list[dict], logits: PairLogits, method: str) -> None:
    """Set each example's `teacher` to the sigmoid of `logits` for (query, first positive) and each
    (query, negative), in one call over every pair."""
    pairs = [(e["query"], text) for e in examples for text in [e["positives"][0], *e["negatives"]]]
    probabilities = iter(1 / (1 + np.exp(-np.asarray(logits(pairs), dtype=np.float64))))
    for example in examples:
        scores = [round(float(next(probabilities)), 6) for _ in range(1 + len(example["negatives"]))]
        example["teacher"] = {"method": method, "positive": scores[0], "negatives": scores[1:]}


def llm_scores(examples: list[dict], judge: PairLogits) -> None:
    """Set each example's `teacher` from the judge's yes/no log-odds of its first positive and its negatives
    (`judge`: a `RelevanceJudge`, or any callable that scores (query, passage) pairs)."""
    sigmoid_scores(examples, judge, "llm")


def cross_encoder_logits(
    model_ref: str, batch_size: int, device: str = "cpu", dtype: str = "float32", key: str = "triples.teacher.model"
) -> PairLogits:
    """A CrossEncoder's raw relevance logits of (query, passage) pairs (its configured activation bypassed), run
    on `device` in `dtype`; a reference that is not a one-logit cross-encoder is a ConfigError naming `key`."""
    import torch

    model = load_cross_encoder(model_ref, device, dtype, key)
    identity = torch.nn.Identity()
    return lambda pairs: [
        float(s) for s in model.predict(pairs, batch_size=batch_size, activation_fn=identity, show_progress_bar=False)
    ]


def cross_encoder_scores(examples: list[dict], logits: PairLogits) -> None:
    """Set each example's `teacher` from a cross-encoder's logits (`cross_encoder_logits`) of its first positive
    and its negatives, generated text included."""
    sigmoid_scores(examples, logits, "cross_encoder")
