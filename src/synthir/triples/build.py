"""Training examples from any mix of sources, with hard negatives from one mining method.

An example is a query with positive passages (the first is the one MNRL uses; SNN uses all) and negatives.
Sources: the labeled train split, verified doc2query pairs, verified Syntriever sets (per gold passage: gold +
synthetic positive + CoT text as positives; synthetic and relabeled negatives). Every example records where each
part came from (`synthir.triples.examples`).
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from ..beir import Corpus, Dataset, Qrels, Queries, passage_text
from ..data.cropping import cropped_examples
from .examples import negative_kind
from .negatives import MiningRule, ScoreRows, choose


def from_train(corpus: Corpus, queries: Queries, qrels: Qrels) -> list[dict]:
    """One example per relevant (query, document) pair of the train split."""
    return [
        {
            "query_id": q,
            "query": queries[q],
            "positive_ids": [d],
            "positives": [passage_text(corpus[d])],
            "negatives": [],
            "negative_ids": [],
            "source": "train",
        }
        for q in sorted(qrels)
        for d, gain in sorted(qrels[q].items())
        if gain > 0
    ]


def from_doc2query(corpus: Corpus, queries: list[dict], negatives: list[dict]) -> list[dict]:
    """One example per verified pseudo-query: its source document as the positive, or the one the judge chose
    (Gecko's relabeling), whose worst-scored candidate then comes first among the negatives. The source and the
    candidates the judge found relevant are never mined as negatives."""
    generated = {n["query_id"]: n["negative"] for n in negatives}
    examples = []
    for q in queries:
        positive = q.get("positive_doc_id", q["doc_id"])
        hard = [q["hard_negative_id"]] if q.get("hard_negative_id") else []
        examples.append(
            {
                "query_id": q["id"],
                "query": q["query"],
                "positive_ids": [positive],
                "positives": [passage_text(corpus[positive])],
                "negatives": [passage_text(corpus[d]) for d in hard],
                "negative_ids": hard,
                "llm_negatives": [generated[q["id"]]] if q["id"] in generated else [],
                "not_negative_ids": [q["doc_id"], *q.get("relevant_ids", [])],  # never mined (Gecko)
                "source": "doc2query",
            }
        )
    return examples


def from_syntriever(corpus: Corpus, sets: list[dict]) -> list[dict]:
    """One example per gold passage of each set, each with the synthetic positive and the CoT text as further
    positives (Syntriever's numerator: gold + p+ + CoT) and all of the set's negatives, synthetic and relabeled
    (they only repel, so every example keeps them). Batches never hold two examples of one query."""
    examples = []
    for s in sets:
        extra = [text for text in (s.get("positive"), s.get("cot")) if text]
        negatives = list(s.get("negatives", []))
        kinds = s.get("negative_kinds") or ["synthetic"] * len(negatives)
        for gold in s.get("positive_doc_ids", []):
            examples.append(
                {
                    "query_id": s["query_id"],
                    "query": s["query"],
                    "positive_ids": [gold] + ["synthetic"] * len(extra),
                    "positives": [passage_text(corpus[gold]), *extra],
                    "negatives": list(negatives),
                    "negative_ids": list(kinds),
                    "relabeled": s.get("relabeled", False),
                    "source": "syntriever",
                }
            )
    return examples


def mine(
    examples: list[dict],
    rows: ScoreRows,
    corpus: Corpus,
    known: Qrels,
    rule: MiningRule,
    seed: int,
    chunk: int = 256,
) -> None:
    """Add mined negatives in place. `known` adds every judged positive of a query to the guard."""
    doc_ids = list(corpus)
    rng = random.Random(seed)
    for start in range(0, len(examples), chunk):
        batch = examples[start : start + chunk]
        scores = rows([e["query"] for e in batch])
        for example, row in zip(batch, scores, strict=True):
            positives = {d for d in example["positive_ids"] if d != "synthetic"}
            positives |= set(example.get("not_negative_ids", [])) | set(example["negative_ids"])  # nor twice
            positives |= {d for d, g in known.get(example["query_id"], {}).items() if g > 0}
            chosen = choose(row, doc_ids, positives, rule, rng)
            example["negative_ids"] += [d for d, _ in chosen]
            example["negatives"] += [passage_text(corpus[d]) for d, _ in chosen]
            example["negative_scores"] = [round(s, 4) for _, s in chosen]


def use_llm_negatives(examples: Sequence[dict], num: int) -> None:
    """Generated negatives (query_negative, Syntriever) as the hard negatives."""
    for example in examples:
        generated = example.get("llm_negatives", [])[:num]
        example["negatives"] += generated
        example["negative_ids"] += ["generated"] * len(generated)


def load_sources_data(params, data_dir) -> Dataset:
    """The corpus, with the train split's queries and qrels when the dataset has them (the train and syntriever
    sources need them)."""
    from ..beir import has_split, load_dataset
    from ..errors import ConfigError

    labeled = has_split(data_dir, "train")
    if not labeled and {"train", "syntriever"} & set(params.sources):
        raise ConfigError(
            f"triples.sources: {params.sources} needs labeled train queries, and {data_dir} has no "
            f"qrels/train.tsv; for a corpus without labels use sources: [doc2query], [cropped] or both"
        )
    return load_dataset(data_dir, ["train"] if labeled else [])


def gather_examples(params, dataset: Dataset, verified: Path, sample_ids: Sequence[str]) -> list[dict]:
    """The examples of every configured source, in order: train, doc2query, syntriever, cropped."""
    from ..fileio import read_jsonl

    corpus, train = dataset.corpus, dataset.qrels.get("train", {})
    read = lambda name: list(read_jsonl(verified / f"{name}.jsonl"))  # noqa: E731
    examples: list[dict] = []
    syntriever = from_syntriever(corpus, read("syntriever")) if "syntriever" in params.sources else []
    if "train" in params.sources:  # a Syntriever set holds its query's gold passages: it replaces the pair
        covered = {e["query_id"] for e in syntriever}
        examples += [e for e in from_train(corpus, dataset.queries, train) if e["query_id"] not in covered]
    if "doc2query" in params.sources:
        examples += from_doc2query(corpus, read("doc2query"), read("query_negative"))
    examples += syntriever
    if "cropped" in params.sources:
        crop = params.cropped
        examples += cropped_examples(
            corpus,
            list(sample_ids),
            crop.per_doc,
            crop.min_words,
            crop.max_words,
            crop.remove_from_positive,
            params.seed,
        )
    return examples


def add_negatives(params, examples: list[dict], corpus: Corpus, train: Qrels) -> dict:
    """The configured negatives, in place: generated ones (topped up by `fill`'s mining), mined ones, or the
    fusion of several retrievers (`synthir.triples.supervision`, which may relabel the positive and sets the
    teacher scores); what the fusion did, for the metrics ({} for the other methods)."""
    neg = params.negatives
    if neg.method == "fused":
        from .supervision import fused_rule, supervise, teachers_of

        teachers = teachers_of(neg, corpus, params)
        return {"supervision": supervise(examples, teachers, corpus, train, fused_rule(neg), params.seed)}
    rule = MiningRule(neg.num_negatives, neg.rank_from, neg.rank_to, neg.margin, neg.max_score, neg.strategy)
    if neg.method == "llm":
        use_llm_negatives(examples, neg.num_negatives)
        short = [e for e in examples if len(e["negatives"]) < neg.num_negatives]
        if neg.fill != "none" and short:
            fill = score_rows(neg.model_copy(update={"method": neg.fill}), corpus, params)
            mine(short, fill, corpus, train, rule, params.seed)
    elif neg.method != "none":
        mine(examples, score_rows(neg, corpus, params), corpus, train, rule, params.seed)
    return {}


def finish(examples: list[dict], negative_method: str) -> None:
    """Drop what only building needed; record the negatives' method."""
    for example in examples:
        example.pop("llm_negatives", None)
        example.pop("not_negative_ids", None)
        example["negative_method"] = negative_method


def build(params, data_dir, verified, output, metrics_path, sample_ids: Sequence[str] = ()) -> dict:
    """The triples stage's work: examples from the configured sources, negatives from the configured method;
    `sample_ids` are the sampled documents the `cropped` source crops."""
    from ..devices import check_device
    from ..fileio import write_json, write_jsonl
    from ..retrieval import encoder_record

    started = time.perf_counter()
    check_device(params.device, params.dtype, "triples.device", "triples.dtype")
    dataset = load_sources_data(params, data_dir)
    examples = gather_examples(params, dataset, Path(verified), sample_ids)
    supervision = add_negatives(params, examples, dataset.corpus, dataset.qrels.get("train", {}))
    if params.teacher.method != "none":  # replaces the fused method's teacher scores
        score_teacher(params.teacher, examples, dataset.corpus, params)
    finish(examples, params.negatives.method)
    write_jsonl(output, examples)
    seconds = round(time.perf_counter() - started, 2)
    summary = {**stats(examples), **supervision, "encoder": encoder_record(params), "seconds": seconds}
    write_json(metrics_path, summary)
    return summary


def triples_stage(params, data_dir, verified, sample: Path, output, metrics_path, completions: Path) -> dict:
    """The triples stage: `sample`'s document ids read and the committed completions imported, then `build`."""
    from ..llm.completions import import_committed

    sample_ids = sample.read_text(encoding="utf-8").split()
    import_committed(completions)
    return build(params, data_dir, verified, output, metrics_path, sample_ids)


def score_rows(neg, corpus: Corpus, encoding) -> ScoreRows:
    """`neg.method`'s scores; a dense or cross-encoder model runs on `encoding`'s device and dtype."""
    from .negatives import bm25_rows, cross_encoder_pairs, dense_rows, rerank_rows

    if neg.method == "bm25":
        return bm25_rows(corpus)
    if neg.method == "dense":
        from ..retrieval import load_encoder

        model = load_encoder(neg.model, device=encoding.device, dtype=encoding.dtype, block="triples")
        return dense_rows(model, corpus, neg.batch_size, neg.query_prefix, neg.passage_prefix)
    if neg.judge is not None:  # offline cross-encoder: the LLM's pointwise yes/no score
        from ..llm.judge import RelevanceJudge

        pairs = RelevanceJudge.open(neg.judge)
    else:
        pairs = cross_encoder_pairs(neg.model, neg.batch_size, encoding.device, encoding.dtype)
    return rerank_rows(pairs, bm25_rows(corpus), corpus, neg.rerank_depth)


def score_teacher(teacher, examples: list[dict], corpus: Corpus, encoding) -> None:
    """Each example's `teacher` scores (`synthir.triples.teacher`) for its first positive and its negatives; the
    hybrid's dense half and the cross-encoder run on `encoding`'s device and dtype."""
    from .teacher import cross_encoder_logits, cross_encoder_scores, hybrid_scores, llm_scores

    if teacher.method == "hybrid":
        from ..retrieval import load_encoder
        from .negatives import bm25_rows, dense_rows

        model = load_encoder(teacher.model, device=encoding.device, dtype=encoding.dtype, block="triples")
        dense = dense_rows(model, corpus, teacher.batch_size, "", "")
        hybrid_scores(examples, corpus, bm25_rows(corpus), dense)
    elif teacher.method == "cross_encoder":
        logits = cross_encoder_logits(teacher.model, teacher.batch_size, encoding.device, encoding.dtype)
        cross_encoder_scores(examples, logits)
    else:
        from ..llm.judge import RelevanceJudge

        llm_scores(examples, RelevanceJudge.open(teacher.judge, desc="teacher"))


def stats(examples: list[dict]) -> dict:
    kinds = Counter(negative_kind(n) for e in examples for n in e["negative_ids"])
    return {
        "examples": len(examples),
        "by_source": dict(Counter(e["source"] for e in examples)),
        "with_negatives": sum(bool(e["negatives"]) for e in examples),
        "negatives": sum(len(e["negatives"]) for e in examples),
        "negatives_by_kind": dict(sorted(kinds.items())),
        "positives": sum(len(e["positives"]) for e in examples),
        "with_teacher_scores": sum("teacher" in e for e in examples),
    }
