"""The verify stage: checking synthetic data with the LLM relevance judge (`synthir.llm.judge`: pointwise yes/no
scores, Syntriever self-verification, Gecko relabeling) and the round-trip filter (InPars / Promptagator: keep a
pseudo-query only if it retrieves its source), as named steps over the generate stage's outputs."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..beir import Corpus, passage_text
from ..llm.cached import CachedBackend
from ..llm.judge import RelevanceJudge
from ..prompting import load_template

log = logging.getLogger(__name__)


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


@dataclass
class Verification:
    """What verify's steps share: its params, the corpus, the judge (None while no step needs one) and what the
    metrics report: counts, and per judging task its prompts, seconds and LLM counters."""

    params: Any
    corpus: Corpus
    judge: RelevanceJudge | None
    counts: dict[str, int] = field(default_factory=dict)
    tasks: dict[str, dict] = field(default_factory=dict)

    @property
    def backend(self) -> CachedBackend | None:
        return self.judge.backend if self.judge else None

    def opened_judge(self) -> RelevanceJudge:
        """The judge, opened now if no step needed it up front."""
        self.judge = self.judge or RelevanceJudge.open(self.params.judge)
        return self.judge

    def judged(self, task: str, pairs: list[tuple[str, str]], judge: RelevanceJudge | None = None) -> list[float]:
        """The judge's scores of `pairs` (`judge`: the same judge asking another question), with the task's
        prompts, seconds and LLM counters recorded for the metrics."""
        judge = judge or self.opened_judge()
        before, started = judge.backend.stats.as_dict(), time.perf_counter()
        scores = judge.score(pairs, desc=task)
        seconds = round(time.perf_counter() - started, 2)
        self.tasks[task] = {"prompts": len(pairs), "seconds": seconds, "llm": judge.backend.stats.counts_since(before)}
        return scores

    def encoder(self, ref: str):
        """An encoder on verify's device, in its dtype."""
        from ..retrieval import load_encoder

        return load_encoder(ref, device=self.params.device, dtype=self.params.dtype, block="verify")


def read_generated(generated: Path, task: str) -> list[dict]:
    """The generate stage's records of one task (none when the task did not run)."""
    from ..fileio import read_jsonl

    path = generated / f"{task}.jsonl"
    return list(read_jsonl(path)) if path.exists() else []


def open_judge(
    params, backend: CachedBackend | None, queries: list[dict], negatives: list[dict], sets: list[dict]
) -> RelevanceJudge | None:
    """The judge on `backend` when one is given, else opened up front when some step will ask it; else None."""
    needs_judge = (
        (params.score_queries and queries)
        or (params.gecko.enabled and queries)
        or (params.relabel and sets)
        or (params.max_negative_score is not None and negatives)
    )
    if backend is None and not needs_judge:
        return None
    return RelevanceJudge(backend) if backend is not None else RelevanceJudge.open(params.judge)


def score_queries(run: Verification, queries: list[dict]) -> list[dict]:
    """Each pseudo-query's relevance score to its source; below `min_query_score` it is dropped."""
    params = run.params
    if params.score_queries and queries:
        pairs = [(q["query"], passage_text(run.corpus[q["doc_id"]])) for q in queries]
        scores = run.judged("score_queries", pairs)
        queries = [{**q, "score": s} for q, s in zip(queries, scores, strict=True)]
        if params.min_query_score is not None:
            queries = [q for q in queries if q["score"] >= params.min_query_score]
    run.counts["dropped_by_score"] = run.counts["queries_in"] - len(queries)
    return queries


def stop_judge_for_encoders(run: Verification, queries: list[dict]) -> None:
    """Free the GPU of the judge's engine when encoders (round trip, Gecko) are about to load beside it."""
    if (run.params.round_trip.enabled or run.params.gecko.enabled) and queries:
        make_room_for_encoders(run.backend, run.params.device)


def round_trip_filter(run: Verification, queries: list[dict]) -> list[dict]:
    """Keep a pseudo-query only if it retrieves its source among the top k (its rank recorded)."""
    rt = run.params.round_trip
    if rt.enabled and queries:
        ranks = round_trip_ranks(
            run.encoder(rt.model),
            run.corpus,
            [q["query"] for q in queries],
            [q["doc_id"] for q in queries],
            rt.k,
            rt.batch_size,
            rt.query_prefix,
            rt.passage_prefix,
        )
        kept = [{**q, "round_trip_rank": r} for q, r in zip(queries, ranks, strict=True) if r is not None]
        run.counts["dropped_by_round_trip"] = len(queries) - len(kept)
        queries = kept
        free_encoder_memory(run.params.device)
    run.counts["queries_kept"] = len(queries)
    return queries


def gecko_relabel(run: Verification, queries: list[dict]) -> list[dict]:
    """Gecko: judge each query's source and fused top-k candidates; the best is its positive, the worst (if
    judged irrelevant) its hard negative (`relabel_positive`)."""
    gecko = run.params.gecko
    if not (gecko.enabled and queries):
        return queries
    found = fused_candidates(
        run.encoder(gecko.model),
        run.corpus,
        [q["query"] for q in queries],
        gecko.k,
        gecko.batch_size,
        gecko.query_prefix,
        gecko.passage_prefix,
    )
    free_encoder_memory(run.params.device)  # before the judge's engine starts again
    candidates = [
        [q["doc_id"], *(d for d in c if d != q["doc_id"])][: gecko.k + 1] for q, c in zip(queries, found, strict=True)
    ]
    pairs = [(q["query"], passage_text(run.corpus[d])) for q, c in zip(queries, candidates, strict=True) for d in c]
    scores = iter(run.judged("gecko", pairs))
    queries = [
        relabel_positive(q, c, [next(scores) for _ in c], gecko.max_negative_score)
        for q, c in zip(queries, candidates, strict=True)
    ]
    run.counts["gecko_positive_changed"] = sum(q["positive_doc_id"] != q["doc_id"] for q in queries)
    return queries


def judge_negatives(run: Verification, negatives: list[dict], queries: list[dict]) -> list[dict]:
    """The generated negatives of the kept queries, less those the judge scores above `max_negative_score`: a
    "negative" that answers its query is a false one."""
    kept_ids = {q["id"] for q in queries}
    negatives = [n for n in negatives if n["query_id"] in kept_ids]
    limit = run.params.max_negative_score
    if limit is not None and negatives:
        scores = run.judged("judge_negatives", [(n["query"], n["negative"]) for n in negatives])
        run.counts["negatives_judged_relevant"] = sum(s > limit for s in scores)
        negatives = [{**n, "score": s} for n, s in zip(negatives, scores, strict=True) if s <= limit]
    run.counts["negatives_kept"] = len(negatives)
    return negatives


def relabel_sets(run: Verification, sets: list[dict]) -> list[dict]:
    """Syntriever's self-verification of each set's synthetic positive (`self_verify`); with `relabel` off every
    positive stays one."""
    if not sets:
        return sets
    params, scores_by_id = run.params, {}
    if params.relabel:
        relevant = params.relabel_question == "relevant"
        question = run.opened_judge().asking(load_template("relabel_relevant")) if relevant else None
        with_positive = [s for s in sets if s.get("positive")]
        scores = run.judged("relabel", [(s["query"], s["positive"]) for s in with_positive], question)
        scores_by_id = dict(zip((s["id"] for s in with_positive), scores, strict=True))
    sets = self_verify(sets, [scores_by_id.get(s["id"]) for s in sets], params.relabel_margin)
    run.counts["sets"] = len(sets)
    run.counts["relabeled"] = sum(s["relabeled"] for s in sets)
    return sets


def write_verified(out_dir: Path, queries: list[dict], negatives: list[dict], sets: list[dict]) -> None:
    from ..fileio import write_jsonl

    out_dir.mkdir(parents=True, exist_ok=True)
    write_jsonl(out_dir / "doc2query.jsonl", queries)
    write_jsonl(out_dir / "query_negative.jsonl", negatives)
    write_jsonl(out_dir / "syntriever.jsonl", sets)


def write_summary(run: Verification, metrics_path: Path, started: float) -> dict:
    """verify's metrics: the counts, each judging task's cost, the LLM's counters and the encoder used."""
    from ..fileio import write_json
    from ..retrieval import encoder_record

    summary = {
        **run.counts,
        "tasks": run.tasks,
        "llm": run.backend.stats.as_dict() if run.backend else {},
        "encoder": encoder_record(run.params),
        "seconds": round(time.perf_counter() - started, 2),
    }
    write_json(metrics_path, summary)
    return summary


def verify_outputs(params, data_dir, generated: Path, out_dir: Path, metrics_path: Path, backend=None) -> dict:
    """The verify stage's work: judge, relabel and round-trip filter the generate stage's outputs."""
    from ..beir import load_corpus
    from ..devices import check_device

    started = time.perf_counter()
    check_device(params.device, params.dtype, "verify.device", "verify.dtype")  # before any LLM call
    corpus = load_corpus(Path(data_dir) / "corpus.jsonl")
    queries, negatives, sets = (read_generated(generated, t) for t in ("doc2query", "query_negative", "syntriever"))
    judge = open_judge(params, backend, queries, negatives, sets)
    run = Verification(params, corpus, judge, counts={"queries_in": len(queries)})
    queries = score_queries(run, queries)
    stop_judge_for_encoders(run, queries)
    queries = round_trip_filter(run, queries)
    queries = gecko_relabel(run, queries)
    negatives = judge_negatives(run, negatives, queries)
    sets = relabel_sets(run, sets)
    write_verified(out_dir, queries, negatives, sets)
    return write_summary(run, metrics_path, started)


def verify_stage(params, data_dir, generated: Path, out_dir: Path, metrics_path: Path, completions: Path) -> dict:
    """The verify stage: the committed completions imported, then `verify_outputs`."""
    from ..llm.completions import import_committed

    import_committed(completions)
    return verify_outputs(params, data_dir, generated, out_dir, metrics_path)
