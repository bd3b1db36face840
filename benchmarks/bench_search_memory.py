"""Device memory of the exact search: the measured peak (torch.cuda.max_memory_allocated) of `retrieval.top_k`
over a corpus held on the host, against `retrieval.search_device_bytes`, for embedding widths 384 and 768.

The corpus never enters the device whole: the peak depends on the queries and the chunk, not on the corpus size
(two corpus sizes are measured to show it). Run on a GPU (a minute):

    python benchmarks/bench_search_memory.py
    python benchmarks/bench_search_memory.py --cpu-smoke   # tiny sizes on the CPU: stated bytes only
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from synthir.retrieval import DOC_CHUNK, search_device_bytes, top_k


def measure(num_queries: int, num_docs: int, dim: int, depth: int, doc_chunk: int, device: str) -> dict:
    generator = torch.Generator().manual_seed(0)
    docs = torch.nn.functional.normalize(torch.randn(num_docs, dim, generator=generator), dim=1)  # on the host
    queries = torch.nn.functional.normalize(torch.randn(num_queries, dim, generator=generator), dim=1).to(device)
    measured = None
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()  # the queries: counted by the stated bytes too
        top_k(queries, docs, depth + 1, doc_chunk)
        torch.cuda.synchronize()
        measured = torch.cuda.max_memory_allocated() - before + queries.numel() * 4
    else:
        top_k(queries, docs, depth + 1, doc_chunk)
    stated = search_device_bytes(num_queries, dim, depth + 1, num_docs, doc_chunk)
    return {
        "queries": num_queries,
        "docs": num_docs,
        "dim": dim,
        "doc_chunk": doc_chunk,
        "stated_mib": round(stated / 2**20, 1),
        "measured_mib": None if measured is None else round(measured / 2**20, 1),
        "within_stated": None if measured is None else measured <= stated,
        "corpus_on_host_mib_per_100k": round(100_000 * dim * 4 / 2**20, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queries", type=int, default=10_000)
    parser.add_argument("--docs", type=int, nargs="+", default=[200_000, 400_000])
    parser.add_argument("--doc-chunk", type=int, default=DOC_CHUNK)
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny sizes on the CPU (no measurement)")
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results/search_memory.json"))
    args = parser.parse_args()
    device = "cpu" if args.cpu_smoke or not torch.cuda.is_available() else "cuda"
    queries, docs, chunk = (20, [300, 600], 128) if args.cpu_smoke else (args.queries, args.docs, args.doc_chunk)
    rows = [measure(queries, n, dim, 100, chunk, device) for dim in (384, 768) for n in docs]
    report = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "runs": rows}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    for row in rows:
        print(json.dumps(row))
    if any(row["within_stated"] is False for row in rows):
        raise SystemExit("the measured peak exceeds the stated bytes")


if __name__ == "__main__":
    main()
