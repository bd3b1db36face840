"""align_retrieve: the stage-1 retriever's top-K passages for each training query (empty when align is off)."""

import argparse
from pathlib import Path

from synthir.align.candidates import retrieve_candidates, training_queries
from synthir.errors import ConfigError, friendly_errors
from synthir.fileio import read_jsonl, write_jsonl
from synthir.stage import stage_params


@friendly_errors
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--triples", type=Path, required=True)
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args()
    params = stage_params("align_retrieve")
    align, stage1 = params.align, params.train
    candidates = []
    if align.enabled:
        from synthir.beir import load_corpus
        from synthir.retrieval import Prefixes, load_encoder

        examples = list(read_jsonl(args.triples))
        queries = training_queries(examples, align.query_sources, align.max_queries, align.seed)
        if not queries:
            present = sorted({e.get("source") for e in examples})
            raise ConfigError(
                f"align.query_sources: {align.query_sources} selects no query of {args.triples} (its sources: "
                f"{present}); add doc2query to align on pseudo-queries"
            )
        candidates = retrieve_candidates(
            load_encoder(args.model, device=align.device, dtype=align.dtype, block="align"),
            load_corpus(args.data / "corpus.jsonl"),
            queries,
            align.k,
            align.encode_batch_size,
            Prefixes(stage1.query_prefix, stage1.passage_prefix),
        )
    write_jsonl(args.output, candidates)


if __name__ == "__main__":
    raise SystemExit(main())
