"""adapt: pre-adapt train.base_model to the corpus (adapt.method tsdae, GPL's first step); `train` starts from it.
Off (adapt.method none), the folder holds a note and train starts from train.base_model."""

import argparse
import json
from pathlib import Path

from synthir.beir import load_corpus, passage_text
from synthir.errors import friendly_errors
from synthir.fileio import atomic_dir, write_json
from synthir.models import check_reference, resolve
from synthir.retrieval import load_encoder
from synthir.stage import stage_params
from synthir.training.adapt import sample_passages, save_adapted, tsdae
from synthir.training.model_card import describe_adaptation


@friendly_errors
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, required=True, help="BEIR dataset folder")
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--metrics", type=Path, required=True)
    args = parser.parse_args()
    params = stage_params("adapt", check_model=check_reference)
    adapt = params.adapt
    if adapt.method == "none":
        with atomic_dir(args.output) as folder:
            (folder / "README.md").write_text("Adaptation is off (adapt.method: none): train starts from its base.\n")
        write_json(args.metrics, {"enabled": False})
        return
    corpus = load_corpus(args.data / "corpus.jsonl")
    passages = sample_passages([passage_text(doc) for doc in corpus.values()], adapt.max_passages, adapt.seed)
    base = params.train.base_model
    device = params.train.device  # where the student trains
    model = load_encoder(base, device=device, dtype="at_least_float32", block="train")
    summary = tsdae(
        model,
        passages,
        epochs=adapt.epochs,
        batch_size=adapt.batch_size,
        lr=adapt.lr,
        deletion_ratio=adapt.deletion_ratio,
        max_seq_length=adapt.max_seq_length,
        seed=adapt.seed,
    )
    describe_adaptation(model, base, resolve(base))
    save_adapted(model, args.output)
    summary["device"] = device
    write_json(args.metrics, summary)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    raise SystemExit(main())
