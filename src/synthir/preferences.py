"""LLM preferences over pairs of the stage-1 retriever's top-K (Syntriever stage 2, the `align_judge` stage).

Small LLMs are strongly position-biased on "A or B?" prompts, so a preference comes either from pointwise yes/no
log-prob scores of each passage, or from a pairwise question asked in both orders, keeping only pairs whose two
answers agree. Every judgement goes through the LLM cache: a rerun or a resumed run repeats none.
"""

from __future__ import annotations

import itertools
import random
import time
from pathlib import Path

from .beir import Corpus, passage_text
from .llm import CachedBackend, open_backend
from .prompting import Template, truncate_words
from .verify import judge, score_prompts


def sample_pairs(k: int, n: int, rng: random.Random) -> list[tuple[int, int]]:
    """n distinct unordered pairs (i < j) of positions 0..k-1 (all of them when n ≥ k(k-1)/2), in rank order."""
    pairs = list(itertools.combinations(range(k), 2))
    return pairs if n >= len(pairs) else sorted(rng.sample(pairs, n))


def pointwise_margins(
    backend: CachedBackend, template: Template, corpus: Corpus, candidates: list[dict], plans: list[list[tuple]]
) -> list[list[float]]:
    """Margin of passage i over j: the difference of their yes/no relevance scores (each passage judged once)."""
    pairs = [(r["query"], passage_text(corpus[d])) for r in candidates for d in r["doc_ids"]]
    scores, margins, offset = judge(backend, template, pairs), [], 0
    for record, plan in zip(candidates, plans, strict=True):
        own = scores[offset : offset + len(record["doc_ids"])]
        offset += len(record["doc_ids"])
        margins.append([own[i] - own[j] for i, j in plan])
    return margins


def pairwise_margins(
    backend: CachedBackend,
    template: Template,
    corpus: Corpus,
    candidates: list[dict],
    plans: list[list[tuple]],
    max_words: int = 120,
) -> tuple[list[list[float]], int]:
    """ "Is A more relevant than B?" asked as (i, j) and as (j, i). The two answers agree when one says yes and
    the other no; the margin is then the mean of the two log-odds, else 0. Returns margins and agreeing pairs."""
    prompts = []
    for record, plan in zip(candidates, plans, strict=True):
        text = [truncate_words(passage_text(corpus[d]), max_words) for d in record["doc_ids"]]
        for i, j in plan:
            for a, b in ((i, j), (j, i)):
                prompts.append(template.messages(query=record["query"], passage_a=text[a], passage_b=text[b]))
    scores = iter(score_prompts(backend, prompts, desc="prefer"))
    margins, agreed = [], 0
    for plan in plans:
        row = []
        for _ in plan:
            forward, backward = next(scores), next(scores)
            agree = forward * backward < 0
            agreed += agree
            row.append((forward - backward) / 2 if agree else 0.0)
        margins.append(row)
    return margins, agreed


def preferences(
    backend: CachedBackend,
    template: Template,
    corpus: Corpus,
    candidates: list[dict],
    method: str,
    n_pairs: int,
    min_margin: float,
    seed: int,
) -> tuple[list[dict], dict]:
    """One record per decided pair: (query, preferred, rejected, margin, ranks); stats with agreement rates."""
    rng = random.Random(seed)
    plans = [sample_pairs(len(r["doc_ids"]), n_pairs, rng) for r in candidates]
    counts = {"queries": len(candidates), "pairs": sum(map(len, plans)), "decided": 0, "preferred_higher_ranked": 0}
    if method == "pointwise":
        margins = pointwise_margins(backend, template, corpus, candidates, plans)
    else:
        margins, counts["agreed"] = pairwise_margins(backend, template, corpus, candidates, plans)
    kept: list[dict] = []
    for record, plan, row in zip(candidates, plans, margins, strict=True):
        for (i, j), margin in zip(plan, row, strict=True):
            if abs(margin) <= min_margin:
                continue
            win, lose = (i, j) if margin > 0 else (j, i)
            counts["decided"] += 1
            counts["preferred_higher_ranked"] += win < lose
            kept.append(
                {
                    "query_id": record["query_id"],
                    "query": record["query"],
                    "preferred": record["doc_ids"][win],
                    "rejected": record["doc_ids"][lose],
                    "preferred_rank": win + 1,
                    "rejected_rank": lose + 1,
                    "margin": round(abs(margin), 4),
                }
            )
    pairs = max(counts["pairs"], 1)
    counts["decided_rate"] = round(counts["decided"] / pairs, 4)
    if method == "pairwise":
        counts["agreement_rate"] = round(counts["agreed"] / pairs, 4)
    # how often the LLM keeps the retriever's order (1.0 would leave nothing to learn)
    counts["retriever_order_kept_rate"] = round(counts["preferred_higher_ranked"] / max(counts["decided"], 1), 4)
    return kept, counts


def preference_examples(prefs: list[dict], corpus: Corpus) -> list[dict]:
    """Training examples: c+ as the positive, c− as the negative; a batch holds each query once."""
    return [
        {
            "query_id": p["query_id"],
            "query": p["query"],
            "positive_ids": [p["preferred"]],
            "positives": [passage_text(corpus[p["preferred"]])],
            "negative_ids": [p["rejected"]],
            "negatives": [passage_text(corpus[p["rejected"]])],
            "batch_key": p["query_id"],
            "margin": p["margin"],
            "ranks": [p["preferred_rank"], p["rejected_rank"]],
            "source": "align",
        }
        for p in prefs
    ]


def judge_stage(params, corpus: Corpus, candidates: list[dict], output: Path, metrics: Path, backend=None) -> dict:
    """The align_judge stage: preferences written as (query, c+, c−) training examples, stats with LLM cost."""
    from .fileio import write_json, write_jsonl
    from .prompting import load_template

    started = time.perf_counter()
    prefs: list[dict] = []
    summary: dict = {"enabled": params.enabled}
    if params.enabled and candidates:
        backend = backend or open_backend(params.judge)
        pointwise = params.method == "pointwise"
        template = load_template("verify_relevance") if pointwise else load_template("prefer_passage")
        prefs, counts = preferences(
            backend,
            template,
            corpus,
            candidates,
            params.method,
            params.pairs,
            params.min_margin,
            params.seed,
        )
        summary |= {"method": params.method, **counts, "llm": backend.stats.as_dict()}
    write_jsonl(output, preference_examples(prefs, corpus))
    summary["seconds"] = round(time.perf_counter() - started, 2)
    write_json(metrics, summary)
    return summary
