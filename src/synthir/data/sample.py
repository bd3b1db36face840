"""The sample stage: the corpus in its nested order (seeded, or diverse over the base retriever's embeddings) and
the ids of the fraction that generation works on."""

from __future__ import annotations

from pathlib import Path

from ..beir import Corpus, load_corpus, passage_text
from ..config import SampleParams
from ..fileio import atomic_file
from .sampling import corpus_order, diverse_order, take_fraction


def sample_stage(sample: SampleParams, data: str | Path, output: str | Path) -> None:
    """Write the sampled document ids of the BEIR folder `data` to `output`, one a line, and say how many."""
    corpus = load_corpus(f"{data}/corpus.jsonl")
    order = diverse_corpus_order(corpus, sample) if sample.strategy == "diverse" else corpus_order(corpus, sample.seed)
    ids = take_fraction(order, sample.fraction)
    with atomic_file(output) as handle:
        handle.writelines(f"{doc_id}\n" for doc_id in ids)
    print(f"sampled {len(ids)} documents ({sample.strategy}, fraction {sample.fraction}, seed {sample.seed})")


def diverse_corpus_order(corpus: Corpus, sample: SampleParams) -> list[str]:
    """`diverse_order` over the embeddings of `sample.model` (the base retriever) on the sample's device."""
    from ..retrieval import encode_passages, load_encoder

    doc_ids = sorted(corpus)
    texts = [passage_text(corpus[d]) for d in doc_ids]
    encoder = load_encoder(sample.model, device=sample.device, dtype=sample.dtype, block="sample")
    embeddings = encode_passages(encoder, texts, sample.batch_size).cpu().numpy()
    return diverse_order(doc_ids, embeddings, sample.clusters, sample.seed)
