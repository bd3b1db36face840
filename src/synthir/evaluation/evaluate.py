"""Metrics with trec_eval semantics (pytrec_eval), averaged over every query of the split's qrels."""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytrec_eval

from ..beir import Qrels, check_id, has_split, load_dataset
from ..config import EvaluateParams
from ..errors import DataError, at, excerpt
from ..fileio import LineBounds, atomic_file, text_lines, write_json
from ..retrieval import (
    Prefixes,
    Run,
    bm25_search,
    dense_search,
    encoder_record,
    encoding_devices,
    load_encoder,
    ranked,
    reciprocal_rank_fusion,
)

log = logging.getLogger(__name__)

# Our name -> pytrec_eval measure. mrr@10 is recip_rank on the run cut to its top 10.
MEASURES = {
    "ndcg@1": "ndcg_cut_1",
    "ndcg@3": "ndcg_cut_3",
    "ndcg@5": "ndcg_cut_5",
    "ndcg@10": "ndcg_cut_10",
    "recall@10": "recall_10",
    "recall@100": "recall_100",
    "p@10": "P_10",
    "map@100": "map_cut_100",
}
METRICS = [*MEASURES, "mrr@10"]


def per_query_metrics(qrels: Qrels, run: Run, ignore_identical_ids: bool = True) -> dict[str, dict[str, float]]:
    """Every metric for every judged query; a query missing from the run scores 0 (trec_eval -c)."""
    if ignore_identical_ids:
        run = {q: {d: s for d, s in hits.items() if d != q} for q, hits in run.items()}
    evaluator = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.1,3,5,10", "recall.10,100", "P.10", "map_cut.100"})
    scores = evaluator.evaluate(run)
    top10 = {q: dict(ranked(hits)[:10]) for q, hits in run.items()}
    reciprocal = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(top10)
    result = {}
    for query_id in qrels:
        found = scores.get(query_id, {})
        values = {name: float(found.get(measure, 0.0)) for name, measure in MEASURES.items()}
        values["mrr@10"] = float(reciprocal.get(query_id, {}).get("recip_rank", 0.0))
        result[query_id] = values
    return result


def aggregate(per_query: dict[str, dict[str, float]]) -> dict[str, float]:
    count = len(per_query)
    return {name: sum(v[name] for v in per_query.values()) / count if count else 0.0 for name in METRICS}


@dataclass
class Evaluation:
    system: str
    split: str
    metrics: dict[str, float]
    per_query: dict[str, dict[str, float]]
    run: Run
    num_queries: int
    num_docs: int
    seconds: dict[str, float] = field(default_factory=dict)
    excluded: list[str] = field(default_factory=list)
    """Queries of the split left out of the evaluation (e.g. few-shot examples shown to the generator)."""
    encoder: dict[str, str] | None = None
    """A dense system's device and dtype (`retrieval.encoder_record`)."""

    def summary(self) -> dict:
        """The metrics file: metric names -> floats, plus counts, the encoder's device and dtype, and timing."""
        return {
            **{name: round(value, 6) for name, value in self.metrics.items()},
            "system": self.system,
            "split": self.split,
            "num_queries": self.num_queries,
            "num_docs": self.num_docs,
            **({"encoder": self.encoder} if self.encoder else {}),
            "seconds": {name: round(value, 3) for name, value in self.seconds.items()},
        }

    def save(self, output: str | Path, per_query: str | Path | None = None, run: str | Path | None = None):
        write_json(output, self.summary())
        if per_query:
            write_json(per_query, self.per_query)
        if run:
            write_trec_run(self.run, run, tag=self.system)


def write_trec_run(run: Run, path: str | Path, tag: str = "synthir") -> None:
    """TREC run format; scores are written with full precision so a reload is exact."""
    tag = "".join(c if c.isalnum() or c in "-_." else "_" for c in tag) or "synthir"
    with atomic_file(path) as handle:
        for query_id, hits in run.items():
            for rank, (doc_id, score) in enumerate(ranked(hits), start=1):
                handle.write(f"{query_id} Q0 {doc_id} {rank} {score!r} {tag}\n")


TREC_LINE_BYTES = 4096
"""The longest line a TREC run file may have (ids, rank, score and tag)."""


def read_trec_run(path: str | Path) -> Run:
    """A TREC run (`query Q0 doc rank score tag` per line); a malformed line is a DataError naming file and line."""
    path = Path(path)
    run: Run = {}
    for lineno, line in text_lines(path, LineBounds(TREC_LINE_BYTES)):
        fields = line.split()
        if fields:
            query_id, doc_id, score = _trec_hit(fields, path, lineno)
            if doc_id in run.setdefault(query_id, {}):
                raise DataError(f"{at(path, lineno)}: document {excerpt(doc_id)} listed twice for this query")
            run[query_id][doc_id] = score
    return run


def _trec_hit(fields: list[str], path: Path, lineno: int) -> tuple[str, str, float]:
    if len(fields) != 6:
        raise DataError(f"{at(path, lineno)}: expected 6 fields (query Q0 doc rank score tag), got {len(fields)}")
    query_id, _, doc_id, _, score, _ = fields
    check_id(query_id, "query id", path, lineno)
    check_id(doc_id, "document id", path, lineno)
    try:
        value = float(score)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise DataError(f"{at(path, lineno)}: score {excerpt(score)} is not a finite number")
    return query_id, doc_id, value


def _finish(system, split, qrels, run, num_docs, seconds, started) -> Evaluation:
    begin = time.perf_counter()
    per_query = per_query_metrics(qrels, run)
    seconds["metrics"] = time.perf_counter() - begin
    seconds["total"] = time.perf_counter() - started
    metrics = aggregate(per_query)
    log.info("%s on %s: %s", system, split, json.dumps({k: round(v, 4) for k, v in metrics.items()}))
    return Evaluation(system, split, metrics, per_query, run, len(qrels), num_docs, seconds)


def evaluate_dense(
    model_ref: str,
    data_dir: str | Path,
    settings: EvaluateParams = EvaluateParams(),
    prefixes: Prefixes = Prefixes(),
    max_seq_length: int | None = None,
    model=None,
    exclude_queries: set[str] = frozenset(),
    cache: bool = True,
) -> Evaluation:
    """Encode corpus and the split's queries with a sentence-transformers model (`model`, or `model_ref` loaded on
    the settings' device and dtype; the corpus on the settings' devices); exact search; metrics.
    `exclude_queries` (e.g. few-shot examples shown to the generator) are left out of the split."""
    started = time.perf_counter()
    dataset = load_dataset(data_dir, [settings.split])
    queries, qrels = dataset.split(settings.split)
    excluded = sorted(q for q in qrels if q in exclude_queries)
    queries = {q: t for q, t in queries.items() if q not in exclude_queries}
    qrels = {q: j for q, j in qrels.items() if q not in exclude_queries}
    seconds: dict[str, float] = {}
    begin = time.perf_counter()
    devices = encoding_devices(settings.device, settings.devices, "evaluate.devices")
    model = model or load_encoder(model_ref, max_seq_length, settings.device, settings.dtype, block="evaluate")
    seconds["load"] = time.perf_counter() - begin
    run = dense_search(
        model,
        dataset.corpus,
        queries,
        settings.depth,
        settings.batch_size,
        prefixes,
        seconds,
        settings.search,
        cache,
        settings.search_chunk_size,
        devices,
    )
    evaluation = _finish(model_ref, settings.split, qrels, run, len(dataset.corpus), seconds, started)
    evaluation.excluded = excluded
    evaluation.encoder = encoder_record(settings)
    return evaluation


def evaluate_bm25(data_dir: str | Path, settings: EvaluateParams = EvaluateParams()) -> Evaluation:
    started = time.perf_counter()
    dataset = load_dataset(data_dir, [settings.split])
    queries, qrels = dataset.split(settings.split)
    seconds: dict[str, float] = {}
    run = bm25_search(dataset.corpus, queries, settings.depth, settings.bm25, seconds)
    return _finish("bm25", settings.split, qrels, run, len(dataset.corpus), seconds, started)


def evaluate_fusion(
    system: str,
    runs: list[Run],
    data_dir: str | Path,
    settings: EvaluateParams = EvaluateParams(),
    exclude_queries: set[str] = frozenset(),
) -> Evaluation:
    """Reciprocal rank fusion of runs on the split (e.g. BM25 with a dense retriever: a label-free hybrid)."""
    started = time.perf_counter()
    dataset = load_dataset(data_dir, [settings.split])
    _, qrels = dataset.split(settings.split)
    qrels = {q: j for q, j in qrels.items() if q not in exclude_queries}
    seconds: dict[str, float] = {}
    begin = time.perf_counter()
    run = reciprocal_rank_fusion([{q: hits for q, hits in r.items() if q in qrels} for r in runs], settings.depth)
    seconds["fuse"] = time.perf_counter() - begin
    return _finish(system, settings.split, qrels, run, len(dataset.corpus), seconds, started)


PER_QUERY_METRICS = ("ndcg@10", "recall@100")
"""The metrics whose per-query scores are committed, for paired significance tests across runs."""


def per_query_record(evaluations: dict[str, Evaluation], split: str | None = None) -> dict:
    """The committed per-query scores of several systems on one split: {split, metrics, systems: {name: {query
    id: [score per metric]}}} (no systems when the split was not evaluated)."""
    splits = {e.split for e in evaluations.values()} | ({split} if split else set())
    return {
        "split": ",".join(sorted(splits)),
        "metrics": list(PER_QUERY_METRICS),
        "systems": {
            name: {q: [round(values[m], 6) for m in PER_QUERY_METRICS] for q, values in e.per_query.items()}
            for name, e in evaluations.items()
        },
    }


def skipped(data_dir: str | Path, split: str) -> dict | None:
    """The metrics file of an evaluation that cannot run (no qrels for the split), else None."""
    if has_split(data_dir, split):
        return None
    return {"skipped": f"no {split} qrels: evaluation skipped", "split": split}


def skip_unlabeled(data_dir: str | Path, split: str, output: str | Path, per_query: str | Path, details: Path) -> bool:
    """Where the split has no qrels, a stage's outputs as a skipped evaluation leaves them (the details folder, a
    per-query record of no systems, the `skipped` metrics file), and True; else nothing is written and False."""
    nothing = skipped(data_dir, split)
    if not nothing:
        return False
    details.mkdir(parents=True, exist_ok=True)
    write_json(per_query, per_query_record({}, split))
    write_json(output, nothing)
    return True
