"""Checking synthetic data: LLM relevance judgements (Syntriever self-verification, pointwise yes/no scores)
and the round-trip filter (InPars / Promptagator: keep a pseudo-query only if it retrieves its source)."""

from __future__ import annotations

import logging
import re
from pathlib import Path

from ..beir import Corpus, passage_text
from ..llm.base import Request, Sampling, UnsupportedError
from ..llm.cached import CachedBackend, open_backend
from ..llm.progress import LLMProgress
from ..prompting import Template, truncate_words

log = logging.getLogger(__name__)

_ANSWER = re.compile(r"\b(yes|no)\b", re.IGNORECASE)


def judge(
    backend: CachedBackend,
    template: Template,
    pairs: list[tuple[str, str]],
    max_words: int = 180,
    desc: str = "judge",
) -> list[float]:
    """Relevance of each (query, passage): log P(yes) − log P(no) where the backend gives log-probs, else
    +1 / −1 from a greedy one-word answer (0 when it says neither)."""
    prompts = [template.messages(query=q, passage=truncate_words(p, max_words)) for q, p in pairs]
    return score_prompts(backend, prompts, desc)


def score_prompts(backend: CachedBackend, prompts: list, desc: str = "judge") -> list[float]:
    """log P(yes) − log P(no) of each yes/no prompt (cached, committed batch by batch), else ±1 / 0 from a greedy
    one-word answer when the backend gives no log-probs."""
    if not prompts:
        return []
    step = getattr(backend, "batch_size", 16)
    scores: list[float] = []
    try:
        with LLMProgress(backend, len(prompts), desc, unit="prompt") as progress:
            for start in range(0, len(prompts), step):
                scores += backend.score_yes_no(prompts[start : start + step])
                progress.advance(len(prompts[start : start + step]))
        return scores
    except UnsupportedError as error:
        log.warning("%s; judging from generated answers instead", error)
    sampling = Sampling(temperature=0.0, max_tokens=4)
    results = backend.generate([Request(messages=m, sampling=sampling) for m in prompts])
    scores = []
    for result in results:
        match = _ANSWER.search(result.texts[0]) if result.texts else None
        scores.append(0.0 if match is None else 1.0 if match.group(1).lower() == "yes" else -1.0)
    return scores


def self_verify(sets: list[dict], scores: list[float | None], margin: float) -> list[dict]:
    """Syntriever: a synthetic positive judged irrelevant (score < margin) is relabeled a hard negative; one not
    judged (score None) stays a positive. `negative_kinds` says which negative is which: "synthetic" (written as
    a negative) or "relabeled" (a rejected positive)."""
    verified = []
    for record, score in zip(sets, scores, strict=True):
        record = dict(record)
        negatives, kinds = ([record["negative"]], ["synthetic"]) if record.get("negative") else ([], [])
        relabeled = score is not None and score < margin and bool(record.get("positive"))
        if relabeled:
            negatives.append(record.pop("positive"))
            kinds.append("relabeled")
        record.pop("negative", None)
        verified.append(
            {**record, "negatives": negatives, "negative_kinds": kinds, "positive_score": score, "relabeled": relabeled}
        )
    return verified


def round_trip_ranks(
    model,
    corpus: Corpus,
    queries: list[str],
    doc_ids: list[str],
    k: int,
    batch_size: int = 32,
    query_prefix: str = "",
    passage_prefix: str = "",
) -> list[int | None]:
    """1-based rank of each query's source document in the model's top-k over the whole corpus (None: absent);
    the prefixes are what the model expects before each (e5: `query: `, `passage: `)."""
    from ..retrieval import encode, encode_passages, top_k

    if not queries:
        return []
    ids = list(corpus)
    position = {d: i for i, d in enumerate(ids)}
    doc_emb = encode_passages(model, [passage_text(corpus[d]) for d in ids], batch_size, passage_prefix)
    query_emb = encode(model, queries, batch_size, query_prefix, desc="round-trip queries")
    _, index = top_k(query_emb, doc_emb, k)
    ranks = []
    for row, doc_id in zip(index.tolist(), doc_ids, strict=True):
        target = position[doc_id]
        ranks.append(row.index(target) + 1 if target in row else None)
    return ranks


def fused_candidates(
    model, corpus: Corpus, queries: list[str], k: int, batch_size: int, query_prefix: str = "", passage_prefix: str = ""
) -> list[list[str]]:
    """Each query's top k documents by reciprocal rank fusion of BM25 and a dense model over the corpus."""
    from ..retrieval import Prefixes, bm25_search, dense_search, reciprocal_rank_fusion

    named = {str(i): text for i, text in enumerate(queries)}
    dense = dense_search(model, corpus, named, k, batch_size, Prefixes(query_prefix, passage_prefix))
    runs = [bm25_search(corpus, named, k), dense]
    fused = reciprocal_rank_fusion(runs, depth=k)
    return [list(fused.get(str(i), {})) for i in range(len(queries))]


def relabel_positive(record: dict, candidates: list[str], scores: list[float], max_negative: float = 0.0) -> dict:
    """Gecko: the best-scored candidate is the positive (the source wins ties); the worst of the others, if the
    judge scores it below `max_negative`, the hard negative. The source, which the query was written from, is
    never the negative, and candidates scored `max_negative` or more are recorded as relevant (never mined)."""
    best = max(range(len(candidates)), key=lambda i: (scores[i], candidates[i] == record["doc_id"]))
    others = [i for i in range(len(candidates)) if i != best and candidates[i] != record["doc_id"]]
    scored = dict(zip(candidates, scores, strict=True))
    relabeled = {**record, "positive_doc_id": candidates[best], "gecko_scores": scored}
    relabeled["relevant_ids"] = [d for i, d in enumerate(candidates) if i != best and scores[i] >= max_negative]
    worst = min(others, key=lambda i: scores[i], default=None)
    if worst is not None and scores[worst] < max_negative:
        relabeled["hard_negative_id"] = candidates[worst]
    return relabeled


def make_room_for_encoders(backend: CachedBackend | None, device: str) -> None:
    """A vLLM judge reserves most of a GPU (`gpu_memory_utilization`), so verify's encoders could not load beside it:
    stop it first when both would share a GPU. All encoding (round trip, Gecko's candidates) runs between the judge's
    two phases, so its next uncached call restarts it once at most."""
    if backend is not None and backend.on_gpu and device.startswith("cuda"):
        log.info("verify: stopping the judge's engine so that the encoders fit on %s; it restarts when needed", device)
        backend.release()


def free_encoder_memory(device: str) -> None:
    """Give the encoders' cached GPU blocks back, so that a restarted judge engine finds them free."""
    import gc

    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        gc.collect()  # the encoders are unreachable once their step returns
        torch.cuda.empty_cache()


def verify_outputs(params, data_dir, generated: Path, out_dir: Path, metrics_path: Path, backend=None) -> dict:
    """The verify stage: judge, relabel and round-trip filter the generate stage's outputs."""
    import time

    from ..beir import load_corpus
    from ..devices import check_device
    from ..fileio import read_jsonl, write_json, write_jsonl
    from ..prompting import load_template
    from ..retrieval import encoder_record, load_encoder

    started = time.perf_counter()
    check_device(params.device, params.dtype, "verify.device", "verify.dtype")  # before any LLM call
    encoder = lambda ref: load_encoder(ref, device=params.device, dtype=params.dtype, block="verify")  # noqa: E731
    corpus = load_corpus(Path(data_dir) / "corpus.jsonl")
    read = lambda name: list(read_jsonl(generated / f"{name}.jsonl")) if (generated / f"{name}.jsonl").exists() else []  # noqa: E731
    queries, negatives, sets = read("doc2query"), read("query_negative"), read("syntriever")
    needs_judge = (
        (params.score_queries and queries)
        or (params.gecko.enabled and queries)
        or (params.relabel and sets)
        or (params.max_negative_score is not None and negatives)
    )
    backend = backend or (open_backend(params.judge) if needs_judge else None)
    template = load_template("verify_relevance")
    counts: dict[str, int] = {"queries_in": len(queries)}
    tasks: dict[str, dict] = {}

    def judged(task: str, question: Template, pairs: list[tuple[str, str]]) -> list[float]:
        """`judge`, with the task's prompts, seconds and LLM counters recorded for the metrics."""
        before, started_task = backend.stats.as_dict(), time.perf_counter()
        scores = judge(backend, question, pairs, desc=task)
        seconds = round(time.perf_counter() - started_task, 2)
        tasks[task] = {"prompts": len(pairs), "seconds": seconds, "llm": backend.stats.counts_since(before)}
        return scores

    if params.score_queries and queries:
        scores = judged("score_queries", template, [(q["query"], passage_text(corpus[q["doc_id"]])) for q in queries])
        queries = [{**q, "score": s} for q, s in zip(queries, scores, strict=True)]
        if params.min_query_score is not None:
            queries = [q for q in queries if q["score"] >= params.min_query_score]
    counts["dropped_by_score"] = counts["queries_in"] - len(queries)
    if (params.round_trip.enabled or params.gecko.enabled) and queries:
        make_room_for_encoders(backend, params.device)
    if params.round_trip.enabled and queries:
        rt = params.round_trip
        ranks = round_trip_ranks(
            encoder(rt.model),
            corpus,
            [q["query"] for q in queries],
            [q["doc_id"] for q in queries],
            rt.k,
            rt.batch_size,
            rt.query_prefix,
            rt.passage_prefix,
        )
        kept = [{**q, "round_trip_rank": r} for q, r in zip(queries, ranks, strict=True) if r is not None]
        counts["dropped_by_round_trip"] = len(queries) - len(kept)
        queries = kept
        free_encoder_memory(params.device)
    counts["queries_kept"] = len(queries)
    if params.gecko.enabled and queries:
        gecko = params.gecko
        backend = backend or open_backend(params.judge)
        found = fused_candidates(
            encoder(gecko.model),
            corpus,
            [q["query"] for q in queries],
            gecko.k,
            gecko.batch_size,
            gecko.query_prefix,
            gecko.passage_prefix,
        )
        free_encoder_memory(params.device)  # before the judge's engine starts again
        candidates = [
            [q["doc_id"], *(d for d in c if d != q["doc_id"])][: gecko.k + 1]
            for q, c in zip(queries, found, strict=True)
        ]
        pairs = [(q["query"], passage_text(corpus[d])) for q, c in zip(queries, candidates, strict=True) for d in c]
        scores = iter(judged("gecko", template, pairs))
        queries = [
            relabel_positive(q, c, [next(scores) for _ in c], gecko.max_negative_score)
            for q, c in zip(queries, candidates, strict=True)
        ]
        counts["gecko_positive_changed"] = sum(q["positive_doc_id"] != q["doc_id"] for q in queries)
    kept_ids = {q["id"] for q in queries}
    negatives = [n for n in negatives if n["query_id"] in kept_ids]
    if params.max_negative_score is not None and negatives:  # a "negative" that answers its query is a false one
        backend = backend or open_backend(params.judge)
        scores = judged("judge_negatives", template, [(n["query"], n["negative"]) for n in negatives])
        counts["negatives_judged_relevant"] = sum(s > params.max_negative_score for s in scores)
        negatives = [
            {**n, "score": s} for n, s in zip(negatives, scores, strict=True) if s <= params.max_negative_score
        ]
    counts["negatives_kept"] = len(negatives)

    if sets:
        scores_by_id: dict[str, float] = {}
        if params.relabel:  # off: every synthetic positive stays a positive
            question = load_template("relabel_relevant") if params.relabel_question == "relevant" else template
            with_positive = [s for s in sets if s.get("positive")]
            scores = judged("relabel", question, [(s["query"], s["positive"]) for s in with_positive])
            scores_by_id = dict(zip((s["id"] for s in with_positive), scores, strict=True))
        sets = self_verify(sets, [scores_by_id.get(s["id"]) for s in sets], params.relabel_margin)
        counts["sets"] = len(sets)
        counts["relabeled"] = sum(s["relabeled"] for s in sets)

    out_dir.mkdir(parents=True, exist_ok=True)
    write_jsonl(out_dir / "doc2query.jsonl", queries)
    write_jsonl(out_dir / "query_negative.jsonl", negatives)
    write_jsonl(out_dir / "syntriever.jsonl", sets)
    summary = {
        **counts,
        "tasks": tasks,
        "llm": backend.stats.as_dict() if backend else {},
        "encoder": encoder_record(params),
        "seconds": round(time.perf_counter() - started, 2),
    }
    write_json(metrics_path, summary)
    return summary
