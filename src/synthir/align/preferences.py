"""LLM preferences over pairs of the stage-1 retriever's top-K (Syntriever stage 2, the `align_judge` stage).

Small LLMs are strongly position-biased on "A or B?" prompts, so a preference comes from pointwise yes/no log-prob
scores of each passage, from a pairwise question asked in both orders (only pairs whose two answers agree are
kept), or as in the Syntriever paper from one forced choice ("Passage #1 or Passage #2") in a seeded random order,
with the position bias measured. Every judgement goes through the LLM cache: a rerun or a resumed run repeats none.
"""

from __future__ import annotations

import itertools
import logging
import random
import re
import time
from pathlib import Path

from ..beir import Corpus, passage_text
from ..llm.base import Request, Sampling
from ..llm.cached import CachedBackend, open_backend
from ..llm.judge import RelevanceJudge, relevance_template, score_prompts
from ..prompting import Template, load_template, truncate_words

log = logging.getLogger(__name__)


def sample_pairs(k: int, n: int, rng: random.Random) -> list[tuple[int, int]]:
    """n distinct unordered pairs (i < j) of positions 0..k-1 (all of them when n ≥ k(k-1)/2), in rank order."""
    pairs = list(itertools.combinations(range(k), 2))
    return pairs if n >= len(pairs) else sorted(rng.sample(pairs, n))


def pointwise_margins(
    backend: CachedBackend, template: Template, corpus: Corpus, candidates: list[dict], plans: list[list[tuple]]
) -> list[list[float]]:
    """Margin of passage i over j: the difference of their yes/no relevance scores (each passage judged once)."""
    pairs = [(r["query"], passage_text(corpus[d])) for r in candidates for d in r["doc_ids"]]
    scores, margins, offset = RelevanceJudge(backend, template).score(pairs), [], 0
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


_CHOICE = re.compile(r"passage\s*#?\s*([12])\b|#\s*([12])\b|^\s*([12])\b", re.IGNORECASE)


def parse_choice(answer: str) -> int | None:
    """1 or 2 from "Passage #1" / "Passage #2" (or a bare "#2", "2"); None when the answer names neither or both."""
    found = {int(next(g for g in m.groups() if g)) for m in _CHOICE.finditer(answer)}
    return found.pop() if len(found) == 1 else None


def forced_choice_margins(
    backend: CachedBackend,
    template: Template,
    corpus: Corpus,
    candidates: list[dict],
    plans: list[list[tuple]],
    rng: random.Random,
    swap_check: float,
    max_words: int = 120,
) -> tuple[list[list[float]], dict]:
    """Syntriever's pairwise preference (App. D.4): the two passages shown once, in a seeded random order, and the
    answer must be "Passage #1" or "Passage #2". Margin +1 when passage i wins, −1 when j wins, 0 when the answer
    names neither. A `swap_check` share of pairs is asked again in the other order: the stats report how often the
    first-shown passage was chosen (0.5 without position bias) and how often the two orders agree."""
    asks, prompts = [], []  # per prompt: (query index, pair index, whether passage i is shown first)
    for q, (record, plan) in enumerate(zip(candidates, plans, strict=True)):
        text = [truncate_words(passage_text(corpus[d]), max_words) for d in record["doc_ids"]]
        for p, (i, j) in enumerate(plan):
            i_first = rng.random() < 0.5
            orders = [i_first] + ([not i_first] if rng.random() < swap_check else [])
            for order in orders:
                a, b = (i, j) if order else (j, i)
                asks.append((q, p, order))
                prompts.append(template.messages(query=record["query"], passage_1=text[a], passage_2=text[b]))
    sampling = Sampling(temperature=0.0, max_tokens=8)
    answers = backend.generate([Request(messages=m, sampling=sampling) for m in prompts])
    margins = [[0.0] * len(plan) for plan in plans]
    seen: dict[tuple[int, int], int] = {}  # (query, pair) -> the winner by the first answer (+1 i, −1 j, 0 none)
    counts = {"answers": len(asks), "unparsed": 0, "first_position_chosen": 0, "swap_checked": 0, "swap_agreed": 0}
    for (q, p, i_first), answer in zip(asks, answers, strict=True):
        choice = parse_choice(answer.texts[0]) if answer.texts else None
        counts["unparsed"] += choice is None
        counts["first_position_chosen"] += choice == 1
        winner = 0 if choice is None else 1 if (choice == 1) == i_first else -1
        if (q, p) in seen:
            counts["swap_checked"] += 1
            counts["swap_agreed"] += winner != 0 and winner == seen[(q, p)]
            continue
        seen[(q, p)] = winner
        margins[q][p] = float(winner)
    parsed = max(counts["answers"] - counts["unparsed"], 1)
    stats = {
        **counts,
        "first_position_rate": round(counts["first_position_chosen"] / parsed, 4),
        "swap_agreement_rate": round(counts["swap_agreed"] / max(counts["swap_checked"], 1), 4),
    }
    return margins, stats


def warn_if_position_bound(bias: dict | None, limit: float = 0.9) -> None:
    """Say so when the forced-choice answers follow the position, not the passages: the preferences are then the
    seeded order, noise to train on (small judges often answer "Passage #1" every time)."""
    if bias and bias["answers"] > bias["unparsed"] and max(rate := bias["first_position_rate"], 1 - rate) >= limit:
        log.warning(
            "the judge chose the %s-shown passage in %.0f%% of its answers (swap agreement %.0f%%): its "
            "forced-choice preferences follow the position, not the passages; consider align.method pointwise",
            "first" if rate >= 0.5 else "second",
            100 * max(rate, 1 - rate),
            100 * bias["swap_agreement_rate"],
        )


def preferences(
    backend: CachedBackend,
    template: Template,
    corpus: Corpus,
    candidates: list[dict],
    method: str,
    n_pairs: int,
    min_margin: float,
    seed: int,
    swap_check: float = 0.0,
) -> tuple[list[dict], dict]:
    """One record per decided pair: (query, preferred, rejected, margin, ranks); stats with agreement rates."""
    rng = random.Random(seed)
    plans = [sample_pairs(len(r["doc_ids"]), n_pairs, rng) for r in candidates]
    counts = {"queries": len(candidates), "pairs": sum(map(len, plans)), "decided": 0, "preferred_higher_ranked": 0}
    if method == "pointwise":
        margins = pointwise_margins(backend, template, corpus, candidates, plans)
    elif method == "pairwise":
        margins, counts["agreed"] = pairwise_margins(backend, template, corpus, candidates, plans)
    else:
        margins, counts["position_bias"] = forced_choice_margins(
            backend, template, corpus, candidates, plans, rng, swap_check
        )
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
    """Training examples: c+ as the positive, c− as the negative (a batch holds each query once)."""
    return [
        {
            "query_id": p["query_id"],
            "query": p["query"],
            "positive_ids": [p["preferred"]],
            "positives": [passage_text(corpus[p["preferred"]])],
            "negative_ids": [p["rejected"]],
            "negatives": [passage_text(corpus[p["rejected"]])],
            "margin": p["margin"],
            "ranks": [p["preferred_rank"], p["rejected_rank"]],
            "source": "align",
        }
        for p in prefs
    ]


def question(method: str) -> Template:
    """The template `method` asks: a yes/no relevance question (pointwise), "is A more relevant than B?"
    (pairwise), or "Passage #1 or Passage #2?" (forced choice)."""
    if method == "pointwise":
        return relevance_template()
    if method == "pairwise":
        return load_template("prefer_passage")
    return load_template("prefer_forced_choice")


def judge_stage(params, corpus: Corpus, candidates: list[dict], output: Path, metrics: Path, backend=None) -> dict:
    """The align_judge stage's work: preferences written as (query, c+, c−) training examples, stats with LLM
    cost."""
    from ..fileio import write_json, write_jsonl

    started = time.perf_counter()
    prefs: list[dict] = []
    summary: dict = {"enabled": params.enabled}
    if params.enabled and candidates:
        backend = backend or open_backend(params.judge)
        prefs, counts = preferences(
            backend,
            question(params.method),
            corpus,
            candidates,
            params.method,
            params.pairs,
            params.min_margin,
            params.seed,
            params.swap_check,
        )
        summary |= {"method": params.method, **counts, "llm": backend.stats.as_dict()}
        warn_if_position_bound(counts.get("position_bias"))
    write_jsonl(output, preference_examples(prefs, corpus))
    summary["seconds"] = round(time.perf_counter() - started, 2)
    write_json(metrics, summary)
    return summary


def align_judge_stage(params, data_dir: Path, candidates: Path, output: Path, metrics: Path, completions: Path) -> dict:
    """The align_judge stage: the retrieved candidates and the corpus read (no corpus when there is no candidate),
    the committed completions imported, then `judge_stage`."""
    from ..beir import load_corpus
    from ..fileio import read_jsonl
    from ..llm.completions import import_committed

    records = list(read_jsonl(candidates))
    corpus = load_corpus(data_dir / "corpus.jsonl") if records else {}
    import_committed(completions)
    return judge_stage(params, corpus, records, output, metrics)
