"""DRAGON-style supervision from several retrievers (Lin et al. 2023, arXiv 2302.07452): label-free, no LLM.

For each example the teachers (BM25, the base dense retriever and, optionally, a previous student) rank the whole
corpus; their rankings are fused as teacher.py's hybrid is, generalised to T teachers and scaled to 1 for rank 1
in all: (k + 1) / T * sum_t 1 / (k + r_t), ranks with ties sharing the best (`corpus_ranks`). From that fusion:

Positive  an example of a `relabel_sources` source keeps its document, unless the fused rank-1 document d is
          another one, every teacher ranks d strictly above it, and d is not guarded (a known positive, a document
          the judge found relevant, an existing negative): then d is the positive (`relabeled_from` names the old
          one, which is never a negative). A doc2query positive the judge already chose (Gecko) is kept.
Negatives `num_negatives` of them, never guarded, from fused positions counted from 0 (as the other methods):
          disagreement  in [rank_from, rank_to), ranked below the positive by every teacher, within one teacher's
                        top `depth` and not within another's: hard for one view, unlikely relevant by all;
          top_k         the fused top `top_k` (minus the positive), the rest from [rank_from, rank_to) (the
                        listwise candidate list: the teacher's head plus deeper ones).
          Drawn with one seeded rng (strategy random) or the best fused (strategy top).
Teacher   `teacher = {"method": "fused", "positive", "negatives"}`: the fused scores, for each example whose positive
          is its document's text (not a cropped sentence's cut positive) and whose negatives are corpus documents.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ..beir import Corpus, Qrels, passage_text
from ..retrieval import RRF_K
from .negatives import ScoreRows


@dataclass(frozen=True)
class FusedRule:
    """What `supervise` picks (params: triples.negatives and its `fused` block)."""

    num_negatives: int = 1
    rank_from: int = 10
    rank_to: int = 50
    strategy: str = "random"  # random: sample the candidates; top: the best fused ones
    candidates: str = "disagreement"  # disagreement | top_k
    depth: int = 50
    top_k: int = 1
    relabel_sources: tuple[str, ...] = ("doc2query", "cropped")


def corpus_ranks(row: np.ndarray) -> np.ndarray:
    """Rank (1 = best) of every column of a score row, tied scores sharing the best rank."""
    ascending = np.sort(row)
    return len(row) - np.searchsorted(ascending, row, side="right") + 1


def normalised_fusion(ranks: np.ndarray, k: int = RRF_K) -> np.ndarray:
    """[teachers, columns] ranks -> each column's reciprocal rank fusion, 1 for rank 1 by every teacher (the
    hybrid teacher's score for two teachers: BM25 and the base retriever)."""
    ranks = np.asarray(ranks, dtype=np.float64)
    return (k + 1) / ranks.shape[0] * (1 / (k + ranks)).sum(axis=0)


@dataclass(frozen=True)
class Fusion:
    """One query's rankings: every teacher's rank of every document, their fused scores and the fused order."""

    ranks: np.ndarray  # [teachers, documents]
    scores: np.ndarray  # [documents]
    order: np.ndarray  # documents, best fused first (ties: corpus order)

    @classmethod
    def of(cls, rows: Sequence[np.ndarray]) -> Fusion:
        ranks = np.stack([corpus_ranks(np.asarray(row)) for row in rows])
        scores = normalised_fusion(ranks)
        return cls(ranks, scores, np.argsort(-scores, kind="stable"))

    def above(self, column: int, other: int) -> bool:
        """Every teacher ranks `column` strictly above `other`."""
        return bool((self.ranks[:, column] < self.ranks[:, other]).all())

    def below(self, column: int, other: int) -> bool:
        """Every teacher ranks `column` strictly below `other`."""
        return bool((self.ranks[:, column] > self.ranks[:, other]).all())

    def disputed(self, column: int, depth: int) -> bool:
        """One teacher ranks `column` within its top `depth`, another does not."""
        within = self.ranks[:, column] <= depth
        return bool(within.any() and not within.all())


def chosen_by_judge(example: dict) -> bool:
    """A doc2query positive Gecko's judge chose over the query's own document (`not_negative_ids` starts with it)."""
    own = example.get("not_negative_ids", [])
    return bool(own) and own[0] != example["positive_ids"][0]


def relabel_target(example: dict, fusion: Fusion, positive: int, guarded: set[int], rule: FusedRule) -> int | None:
    """The column that replaces the positive (see the module docstring), or None to keep it."""
    if example["source"] not in rule.relabel_sources or chosen_by_judge(example):
        return None
    first = int(fusion.order[0])
    if first == positive or first in guarded or not fusion.above(first, positive):
        return None
    return first


def pick(columns: list[int], count: int, strategy: str, rng: random.Random) -> list[int]:
    """`count` of the columns (in fused order): a seeded sample, or the first ones (strategy top)."""
    if count <= 0:
        return []
    if strategy == "random" and len(columns) > count:
        kept = set(rng.sample(columns, count))
        return [c for c in columns if c in kept]
    return columns[:count]


def negative_columns(
    fusion: Fusion, positive: int, guarded: set[int], rule: FusedRule, rng: random.Random
) -> list[int]:
    """The negatives' columns, in fused order, by `rule.candidates`."""
    window = [int(c) for c in fusion.order[rule.rank_from : rule.rank_to] if int(c) not in guarded]
    if rule.candidates == "top_k":
        head = [int(c) for c in fusion.order[: rule.top_k] if int(c) not in guarded][: rule.num_negatives]
        return head + pick(window, rule.num_negatives - len(head), rule.strategy, rng)
    disputed = [c for c in window if fusion.below(c, positive) and fusion.disputed(c, rule.depth)]
    return pick(disputed, rule.num_negatives, rule.strategy, rng)


@dataclass(frozen=True)
class Documents:
    """The corpus as columns of a score row."""

    corpus: Corpus
    ids: list[str]
    position: dict[str, int]

    @classmethod
    def of(cls, corpus: Corpus) -> Documents:
        ids = list(corpus)
        return cls(corpus, ids, {d: i for i, d in enumerate(ids)})

    def text(self, column: int) -> str:
        return passage_text(self.corpus[self.ids[column]])


def teacher_record(example: dict, fusion: Fusion, docs: Documents) -> dict | None:
    """The fused scores of the example's first positive and of each negative, or None when one is not a corpus
    document as the teachers ranked it (a cut positive, a generated negative)."""
    ids = [example["positive_ids"][0], *example["negative_ids"]]
    if any(d not in docs.position for d in ids) or example["positives"][0] != docs.text(docs.position[ids[0]]):
        return None
    scores = [round(float(fusion.scores[docs.position[d]]), 6) for d in ids]
    return {"method": "fused", "positive": scores[0], "negatives": scores[1:]}


def guarded_ids(example: dict, known: Qrels) -> set[str]:
    """Documents never a negative (as `mine`'s): the positives, those the judge found relevant, the negatives it
    has, and every judged positive of its query."""
    guarded = {d for d in example["positive_ids"] if d != "synthetic"}
    guarded |= set(example.get("not_negative_ids", [])) | set(example["negative_ids"])
    return guarded | {d for d, gain in known.get(example["query_id"], {}).items() if gain > 0}


def supervise_one(
    example: dict, fusion: Fusion, docs: Documents, known: Qrels, rule: FusedRule, rng: random.Random
) -> bool:
    """Relabel, add negatives and set the teacher scores of one example in place; True when relabeled."""
    positive = docs.position[example["positive_ids"][0]]
    guarded = {docs.position[d] for d in guarded_ids(example, known) if d in docs.position}
    target = relabel_target(example, fusion, positive, guarded, rule)
    if target is not None:
        example["relabeled_from"] = example["positive_ids"][0]
        example["positive_ids"], example["positives"] = [docs.ids[target]], [docs.text(target)]
        positive = target
        guarded.add(target)
    chosen = negative_columns(fusion, positive, guarded, rule, rng)
    example["negative_ids"] += [docs.ids[c] for c in chosen]
    example["negatives"] += [docs.text(c) for c in chosen]
    example["negative_scores"] = [round(float(fusion.scores[c]), 4) for c in chosen]
    teacher = teacher_record(example, fusion, docs)
    if teacher is not None:
        example["teacher"] = teacher
    return target is not None


def supervise(
    examples: list[dict],
    teachers: Mapping[str, ScoreRows],
    corpus: Corpus,
    known: Qrels,
    rule: FusedRule,
    seed: int,
    chunk: int = 256,
) -> dict:
    """Every example supervised in place from the fusion of the `teachers`' rankings; what was done, for the
    metrics."""
    docs, rng = Documents.of(corpus), random.Random(seed)
    relabeled: Counter[str] = Counter()
    for start in range(0, len(examples), chunk):
        batch = examples[start : start + chunk]
        rows = [scores([e["query"] for e in batch]) for scores in teachers.values()]
        for i, example in enumerate(batch):
            if supervise_one(example, Fusion.of([row[i] for row in rows]), docs, known, rule, rng):
                relabeled[example["source"]] += 1
    return {
        "teachers": list(teachers),
        "candidates": rule.candidates,
        "relabeled": dict(sorted(relabeled.items())),
        "short_of_negatives": sum(len(e.get("negative_scores", [])) < rule.num_negatives for e in examples),
        "without_teacher_scores": sum("teacher" not in e for e in examples),
    }


def teachers_of(neg, corpus: Corpus, encoding) -> dict[str, ScoreRows]:
    """The teachers of `neg` (triples.negatives): BM25, the base retriever `neg.model` and `neg.fused.student`
    when set, the dense ones on `encoding`'s device and dtype."""
    from ..retrieval import load_encoder
    from .negatives import bm25_rows, dense_rows

    teachers = {"bm25": bm25_rows(corpus)}
    models = {"dense": neg.model, **({"student": neg.fused.student} if neg.fused.student else {})}
    for name, reference in models.items():
        model = load_encoder(reference, device=encoding.device, dtype=encoding.dtype, block="triples")
        teachers[name] = dense_rows(model, corpus, neg.batch_size, neg.query_prefix, neg.passage_prefix)
    return teachers


def fused_rule(neg) -> FusedRule:
    """The rule of `neg` (triples.negatives with method fused)."""
    fused = neg.fused
    return FusedRule(
        neg.num_negatives,
        neg.rank_from,
        neg.rank_to,
        neg.strategy,
        fused.candidates,
        fused.depth,
        fused.top_k,
        tuple(fused.relabel_sources),
    )
