"""The baseline stage: the untrained base model, BM25 and their rank fusion (the strongest label-free system of the
same parts) on the evaluation split: the numbers training must beat."""

from __future__ import annotations

from pathlib import Path

from ..config import EvaluateParams, Params, TrainParams
from ..fileio import write_json
from ..retrieval import Prefixes, load_encoder
from .evaluate import evaluate_bm25, evaluate_dense, evaluate_fusion, per_query_record, skip_unlabeled


def baseline_stage(params: Params, *, data: str, output: str, details: str, per_query: str) -> None:
    """Score the base model, BM25 and their fusion (each saved in `details` with per-query metrics and run), the
    headline per-query scores to `per_query`, every system's metrics to `output`. A split without qrels writes
    the skipped outputs, and an empty BM25 run. `params` is the stage's (`stage_params`)."""
    model, settings = params.train, params.evaluate
    details = Path(details)
    if skip_unlabeled(data, settings.split, output, per_query, details):
        (details / "bm25.run.trec").write_text("")  # every declared output exists: evaluate reads the BM25 run
        return
    prefixes = Prefixes(model.query_prefix, model.passage_prefix)
    dense = evaluate_dense(model.base_model, data, settings, prefixes, model=base_encoder(model, settings))
    bm25 = evaluate_bm25(data, settings)
    hybrid = evaluate_fusion("bm25+base (RRF)", [bm25.run, dense.run], data, settings)
    results = {"dense": dense, "bm25": bm25, "hybrid": hybrid}
    for name, result in results.items():
        result.save(details / f"{name}.json", details / f"{name}.per_query.json", details / f"{name}.run.trec")
    write_json(per_query, per_query_record({"base": dense, "bm25": bm25, "bm25+base": hybrid}))
    write_json(output, {name: result.summary() for name, result in results.items()})


def base_encoder(model: TrainParams, settings: EvaluateParams):
    """The student as training starts it (pruned and pooled when asked), on the evaluation's device and dtype."""
    return load_encoder(
        model.base_model,
        model.max_seq_length,
        settings.device,
        settings.dtype,
        pooling=model.pooling,
        keep_layers=model.keep_layers,
        block="evaluate",
        length_key="train.max_seq_length",
    )
