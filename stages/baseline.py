"""baseline: the untrained base model, BM25 and their rank fusion (the strongest label-free system of the same
parts) on the evaluation split: the numbers training must beat."""

import argparse
from pathlib import Path

from synthir.errors import friendly_errors
from synthir.evaluation.evaluate import evaluate_bm25, evaluate_dense, evaluate_fusion, per_query_record, skipped
from synthir.fileio import write_json
from synthir.models import check_reference
from synthir.retrieval import Prefixes, load_encoder
from synthir.stage import stage_params


@friendly_errors
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", required=True)
    parser.add_argument("--output", required=True, help="metrics JSON")
    parser.add_argument("--details", required=True, help="folder for runs and per-query metrics")
    parser.add_argument("--per-query", required=True, help="JSON of the headline per-query scores (committed)")
    args = parser.parse_args()
    params = stage_params("baseline", check_model=check_reference)
    model, settings = params.train, params.evaluate
    details = Path(args.details)
    nothing = skipped(args.data, settings.split)
    if nothing:  # every declared output exists, empty: evaluate reads the BM25 run
        details.mkdir(parents=True, exist_ok=True)
        (details / "bm25.run.trec").write_text("")
        write_json(args.per_query, per_query_record({}, settings.split))
        write_json(args.output, nothing)
        return
    encoder = load_encoder(  # the student as training starts it (pruned and pooled when asked)
        model.base_model,
        model.max_seq_length,
        settings.device,
        settings.dtype,
        pooling=model.pooling,
        keep_layers=model.keep_layers,
        block="evaluate",
        length_key="train.max_seq_length",
    )
    dense = evaluate_dense(
        model.base_model, args.data, settings, Prefixes(model.query_prefix, model.passage_prefix), model=encoder
    )
    bm25 = evaluate_bm25(args.data, settings)
    hybrid = evaluate_fusion("bm25+base (RRF)", [bm25.run, dense.run], args.data, settings)
    results = {"dense": dense, "bm25": bm25, "hybrid": hybrid}
    for name, result in results.items():
        result.save(details / f"{name}.json", details / f"{name}.per_query.json", details / f"{name}.run.trec")
    write_json(args.per_query, per_query_record({"base": dense, "bm25": bm25, "bm25+base": hybrid}))
    write_json(args.output, {name: result.summary() for name, result in results.items()})


if __name__ == "__main__":
    raise SystemExit(main())
