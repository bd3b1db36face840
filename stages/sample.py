"""sample: the nested, seeded fraction of the corpus that generation works on."""

import argparse

from synthir.beir import load_corpus
from synthir.errors import friendly_errors
from synthir.fileio import atomic_file
from synthir.sampling import sample_ids
from synthir.stage import stage_params


@friendly_errors
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", required=True)
    parser.add_argument("--output", required=True)
    args = parser.parse_args()
    sample = stage_params("sample").sample
    ids = sample_ids(load_corpus(f"{args.data}/corpus.jsonl"), sample.fraction, sample.seed)
    with atomic_file(args.output) as handle:
        handle.writelines(f"{doc_id}\n" for doc_id in ids)
    print(f"sampled {len(ids)} documents (fraction {sample.fraction}, seed {sample.seed})")


if __name__ == "__main__":
    raise SystemExit(main())
