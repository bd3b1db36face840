"""align_judge: the LLM's preferences over N pairs of each query's top-K, as (query, c+, c−) examples."""

import argparse
import json
from pathlib import Path

from synthir.align.preferences import judge_stage
from synthir.beir import load_corpus
from synthir.errors import friendly_errors
from synthir.fileio import read_jsonl
from synthir.llm.completions import import_committed
from synthir.models import check_reference
from synthir.stage import stage_params


@friendly_errors
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--candidates", type=Path, required=True)
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--metrics", type=Path, required=True)
    parser.add_argument("--completions", type=Path, required=True, help="committed completions, imported first")
    args = parser.parse_args()
    candidates = list(read_jsonl(args.candidates))
    corpus = load_corpus(args.data / "corpus.jsonl") if candidates else {}
    params = stage_params("align_judge", check_model=check_reference).align
    import_committed(args.completions)
    summary = judge_stage(params, corpus, candidates, args.output, args.metrics)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    raise SystemExit(main())
