"""sample: the nested, seeded fraction of the corpus that generation works on (random, or diverse: spread over
k-means clusters of the base retriever's embeddings)."""

import argparse

from synthir.beir import load_corpus, passage_text
from synthir.data.sampling import corpus_order, diverse_order, take_fraction
from synthir.errors import friendly_errors
from synthir.fileio import atomic_file
from synthir.models import check_reference
from synthir.stage import stage_params


@friendly_errors
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", required=True)
    parser.add_argument("--output", required=True)
    args = parser.parse_args()
    sample = stage_params("sample", check_model=check_reference).sample
    corpus = load_corpus(f"{args.data}/corpus.jsonl")
    if sample.strategy == "diverse":
        from synthir.retrieval import encode_passages, load_encoder

        doc_ids = sorted(corpus)
        texts = [passage_text(corpus[d]) for d in doc_ids]
        encoder = load_encoder(sample.model, device=sample.device, dtype=sample.dtype, block="sample")
        embeddings = encode_passages(encoder, texts, sample.batch_size).cpu().numpy()
        order = diverse_order(doc_ids, embeddings, sample.clusters, sample.seed)
    else:
        order = corpus_order(corpus, sample.seed)
    ids = take_fraction(order, sample.fraction)
    with atomic_file(args.output) as handle:
        handle.writelines(f"{doc_id}\n" for doc_id in ids)
    print(f"sampled {len(ids)} documents ({sample.strategy}, fraction {sample.fraction}, seed {sample.seed})")


if __name__ == "__main__":
    raise SystemExit(main())
