"""baseline: the untrained base model and BM25 on the evaluation split, the numbers training must beat."""

import argparse
from pathlib import Path

from synthir.errors import friendly_errors
from synthir.evaluate import evaluate_bm25, evaluate_dense, skipped
from synthir.fileio import write_json
from synthir.retrieval import Prefixes, load_encoder
from synthir.stage import stage_params


@friendly_errors
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", required=True)
    parser.add_argument("--output", required=True, help="metrics JSON")
    parser.add_argument("--details", required=True, help="folder for runs and per-query metrics")
    args = parser.parse_args()
    params = stage_params("baseline")
    model, settings = params.train, params.evaluate
    details = Path(args.details)
    nothing = skipped(args.data, settings.split)
    if nothing:
        details.mkdir(parents=True, exist_ok=True)
        write_json(args.output, nothing)
        return
    encoder = load_encoder(  # the student as training starts it (pruned and pooled when asked)
        model.base_model,
        model.max_seq_length,
        dtype=settings.dtype,
        pooling=model.pooling,
        keep_layers=model.keep_layers,
    )
    dense = evaluate_dense(
        model.base_model, args.data, settings, Prefixes(model.query_prefix, model.passage_prefix), model=encoder
    )
    bm25 = evaluate_bm25(args.data, settings)
    for name, result in (("dense", dense), ("bm25", bm25)):
        result.save(details / f"{name}.json", details / f"{name}.per_query.json", details / f"{name}.run.trec")
    write_json(args.output, {"dense": dense.summary(), "bm25": bm25.summary()})


if __name__ == "__main__":
    raise SystemExit(main())
