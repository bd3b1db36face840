"""baseline: the untrained base model and BM25 on the evaluation split, the numbers training must beat."""

import argparse
from pathlib import Path

from synthir.cli import friendly_errors
from synthir.config import load_params
from synthir.evaluate import evaluate_bm25, evaluate_dense
from synthir.fileio import write_json
from synthir.retrieval import Bm25Settings, Prefixes


@friendly_errors
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", required=True)
    parser.add_argument("--output", required=True, help="metrics JSON")
    parser.add_argument("--details", required=True, help="folder for runs and per-query metrics")
    args = parser.parse_args()
    params = load_params()
    model, ev = params.train, params.evaluate
    dense = evaluate_dense(
        model.base_model,
        args.data,
        split=ev.split,
        batch_size=ev.batch_size,
        prefixes=Prefixes(model.query_prefix, model.passage_prefix),
        max_seq_length=model.max_seq_length,
        depth=ev.depth,
        dtype=ev.dtype,
        search=ev.search,
    )
    bm25 = evaluate_bm25(args.data, ev.split, ev.depth, Bm25Settings(**ev.bm25.model_dump()))
    details = Path(args.details)
    for name, result in (("dense", dense), ("bm25", bm25)):
        result.save(details / f"{name}.json", details / f"{name}.per_query.json", details / f"{name}.run.trec")
    write_json(args.output, {"dense": dense.summary(), "bm25": bm25.summary()})


if __name__ == "__main__":
    raise SystemExit(main())
