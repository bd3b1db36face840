"""The GPU path, checked in one short run: training throughput, encoding and exact search, the hf backend, and
the train stage with a kill and a resume, on one CUDA GPU with no model hub, no vLLM and no internet.

    PYTHONPATH=src python benchmarks/gpu_check.py                 # the GPU check (3-5 minutes on an H100, estimated)
    PYTHONPATH=src python benchmarks/gpu_check.py --cpu-smoke     # every section reduced, on the CPU (~1 min)

Every model is random, built here from a config (tests/tiny_models.py): MiniLM-L6- and BERT-base-shaped
encoders over a generated 30,522-word vocabulary, and a tiny Qwen2-shaped causal LM with Qwen2's byte-level BPE
tokenizer over a vocabulary made here.
Texts are random words of that vocabulary, one token each. Each section writes its own JSON (figures, its pass
criteria and whether each held) under --out (default: $OUT if set, else benchmarks/results/gpu-check/); a section
that raises is recorded as failed with its traceback, and the next one runs. A summary table ends the run; the
exit status is 1 when any section failed.

On a GPU machine (torch, transformers, sentence-transformers, accelerate and peft installed; no network),
synthir's other requirements travel as wheels (benchmarks/gpu_check_wheels.txt; 35 wheels, ~7 MB). Here, once, in
the repository root: `echo /.whl/ >> .git/info/exclude` and that file's `pip download` command; then, there, with
.whl carried along, in the repository root:

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
      .whl/*.whl && export PYTHONPATH=/tmp/site:src PYTHONUNBUFFERED=1 && set -o pipefail &&
      python3 benchmarks/gpu_check.py 2>&1 | tee $OUT/log.txt

Expected wall time on one H100 or H200, an estimate from FLOPs (6 x non-embedding parameters x tokens for
training, 2x for encoding, at 30-50% of ~790 TFLOP/s) plus process and model-loading overheads, never measured:
start and model building ~20 s; train_throughput ~70 s (19,200 samples per model: BERT-base 2.5 PFLOP, MiniLM
0.3 PFLOP; 10 trainer setups); encode_search ~40 s (220k passages per model: BERT-base 4.6 PFLOP, tokenizing
~10 s); hf_backend ~15 s; train_stage ~60 s (three stage launches, two at once); in all 3-5 minutes.

Sections (criteria in `criterion` calls; in --cpu-smoke only the correctness criteria apply):
  train_throughput  synthir's train loop against a plain SentenceTransformerTrainer (MNRL, one hard negative,
                    same model and data, bf16), batch 64 and 256: steady-state samples/s after warm-up, and MFU
                    (6 FLOPs per non-embedding parameter per real token) against the bf16 GEMM peak measured here
  encode_search     synthir's dense search (retrieval.dense_search) on CUDA in bf16: passages/s, peak GPU memory
                    per 100k documents (from two corpus sizes) extrapolated to 1M and 5M, and each query's top-10
                    against a float64 exact search over the same embeddings
  hf_backend        the hf backend through open_backend: greedy generation and yes/no scoring, the same outputs
                    whether prompts run batched (left-padded) or one by one, and a repeated call served from the
                    completion cache with no engine call
  train_stage       stages/train.py run as dvc.yaml runs it (a temporary project; presets/gpu.yaml's train block,
                    a MiniLM-shaped model): 12 steps with a checkpoint every 4; a run killed after its first
                    checkpoint and resumed ends at the weights of an uninterrupted run
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "src"), str(REPO), str(REPO / "benchmarks")]  # this tree's synthir; tests.tiny_models

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

GIB = 2**30


@dataclass(frozen=True)
class Scale:
    """The sizes of one mode: the GPU check, or its CPU smoke test."""

    device: str
    dtype: str
    """The encoders' and the LLM's precision for inference."""
    mixed_precision: str
    train_shapes: tuple[str, ...]
    train_batches: tuple[int, ...]
    warmup_steps: int
    measured_steps: int
    query_words: int
    passage_words: int
    max_seq_length: int
    encode_shapes: tuple[str, ...]
    corpus_sizes: tuple[int, int]
    queries: int
    encode_batch: int
    llm_prompts: int
    llm_tokens: int
    stage_shape: str
    stage_examples: int
    stage_batch: int | None
    """The train stage's batch; None: presets/gpu.yaml's."""
    vocab_size: int


GPU = Scale(
    device="cuda",
    dtype="bfloat16",
    mixed_precision="bf16",
    train_shapes=("minilm-l6", "bert-base"),
    train_batches=(64, 256),
    warmup_steps=5,
    measured_steps=20,
    query_words=12,
    passage_words=120,
    max_seq_length=256,
    encode_shapes=("minilm-l6", "bert-base"),
    corpus_sizes=(20_000, 100_000),
    queries=1000,
    encode_batch=256,  # presets/gpu.yaml's evaluate.batch_size
    llm_prompts=64,
    llm_tokens=32,
    stage_shape="minilm-l6",
    stage_examples=768,
    stage_batch=None,
    vocab_size=30522,
)
SMOKE = Scale(
    device="cpu",
    dtype="float32",
    mixed_precision="no",
    train_shapes=("tiny",),
    train_batches=(4, 8),
    warmup_steps=2,
    measured_steps=3,
    query_words=6,
    passage_words=24,
    max_seq_length=64,
    encode_shapes=("tiny",),
    corpus_sizes=(200, 1000),
    queries=20,
    encode_batch=64,
    llm_prompts=12,
    llm_tokens=8,
    stage_shape="tiny",
    stage_examples=32,
    stage_batch=8,
    vocab_size=2000,
)

STAGE_STEPS, STAGE_CHECKPOINT_EVERY = 12, 4
TOP = 10
SCORE_TOLERANCE = 1e-4
"""How far below the float64 reference's 10th score a returned top-10 hit may lie (float32 rounding, ties)."""
FITS_GIB = 24.0
"""The card a corpus of 5M passages must fit: a corpus of millions must fit a 24 GB card."""


# --- shared: models, texts, criteria ---


class Workspace:
    """The mode's sizes, a scratch folder, and the models built once and shared by the sections."""

    def __init__(self, scale: Scale, scratch: Path, smoke: bool) -> None:
        from tests.tiny_models import encoder_words, wordpiece_tokenizer

        self.scale, self.scratch, self.smoke = scale, scratch, smoke
        self.tokenizer = wordpiece_tokenizer(scale.vocab_size)
        self.words = encoder_words(scale.vocab_size - 5)
        self.encoders: dict[str, str] = {}
        self._peak: dict | None = None

    def encoder(self, shape: str) -> str:
        """A random sentence encoder of `shape` (tests/tiny_models.ENCODER_SHAPES), built on first use."""
        from tests.tiny_models import ENCODER_SHAPES, save_sentence_encoder

        if shape not in self.encoders:
            folder = self.scratch / f"encoder-{shape}"
            sizes = ENCODER_SHAPES[shape]
            self.encoders[shape] = save_sentence_encoder(folder, self.tokenizer, sizes, self.scale.max_seq_length)
        return self.encoders[shape]

    def texts(self, count: int, words: int, seed: int) -> list[str]:
        rng = random.Random(seed)
        return [" ".join(rng.choices(self.words, k=words)) for _ in range(count)]

    def peak(self) -> dict:
        """The yardstick of MFU: the best square GEMM measured here (benchmarks/machine_limits.py), bf16 on the
        GPU; on the CPU fp32, as bf16 is emulated there."""
        from machine_limits import gemm_flops

        if self._peak is None:
            dtype, size = (torch.bfloat16, 8192) if self.scale.device == "cuda" else (torch.float32, 512)
            flops = gemm_flops(size, dtype, repeats=10, device=self.scale.device) * 1e9
            self._peak = {"flops": flops, "tflops": round(flops / 1e12, 3), "gemm_size": size}
            self._peak["dtype"] = str(dtype).removeprefix("torch.")
        return self._peak


def criterion(record: dict, name: str, held: bool, value, limit: str) -> None:
    """Note one pass criterion in a section's record."""
    record.setdefault("criteria", []).append({"name": name, "pass": bool(held), "value": value, "limit": limit})


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def write_triples(path: Path, ws: Workspace, count: int, seed: int = 0) -> Path:
    """`count` examples with distinct queries and positives: one positive, one hard negative each."""
    from synthir.fileio import write_jsonl

    s = ws.scale
    queries = ws.texts(count, s.query_words, seed)
    passages = ws.texts(2 * count, s.passage_words, seed + 1)
    write_jsonl(
        path,
        (
            {
                "query_id": f"q{i}",
                "query": queries[i],
                "positive_ids": [f"d{i}"],
                "positives": [passages[2 * i]],
                "negatives": [passages[2 * i + 1]],
                "source": "gpu-check",
            }
            for i in range(count)
        ),
    )
    return path


# --- 1. training throughput ---


def synthir_steady(model: str, triples: Path, batch: int, ws: Workspace, folder: Path) -> dict:
    """synthir's loop (`synthir.training.train.train`) at steady state: a run of `warmup` steps (its loop time unused:
    the process's first steps pay one-time costs), then one of `warmup` steps and one of `warmup + measured`;
    the difference of the last two loop times is `measured` steady steps."""
    from synthir.config import TrainParams
    from synthir.training.train import train

    s = ws.scale
    loops, losses = [], []
    for steps in (s.warmup_steps, s.warmup_steps, s.warmup_steps + s.measured_steps):
        params = TrainParams(
            base_model=model,
            batch_size=batch,
            max_steps=steps,
            max_seq_length=s.max_seq_length,
            loss="mnrl",
            num_negatives=1,
            device=s.device,
            mixed_precision=s.mixed_precision,
            seed=13,
        )
        run = folder / f"synthir-{batch}-{len(loops)}"
        summary = train(params, triples, run / "model", run / "live", run / "ckpt")
        loops.append(summary["steps"] * batch / summary["samples_per_second"])
        losses.append(summary["final_loss"])
        free_memory()
    seconds = loops[2] - loops[1]
    figures = {"loop_seconds": [round(x, 3) for x in loops], "losses": losses}
    if seconds > 0:
        return {"samples_per_s": round(s.measured_steps * batch / seconds, 1), **figures}
    if ws.smoke:  # a loaded CPU's noise; the smoke test checks that the loop runs, not its speed
        return {"samples_per_s": None, **figures}
    raise RuntimeError(f"synthir: the longer run's loop was not slower ({loops}); steady state not measurable")


def trainer_steady(model: str, triples: Path, batch: int, ws: Workspace, folder: Path) -> dict:
    """A plain SentenceTransformerTrainer (MNRL, scale 20 = synthir's tau 0.05), timed from the end of step
    `warmup` to the end of step `warmup + measured`, the GPU synchronised at both ends only."""
    from datasets import Dataset
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )
    from transformers import TrainerCallback

    try:
        from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    except ImportError:  # sentence-transformers' older layout
        from sentence_transformers.losses import MultipleNegativesRankingLoss

    s = ws.scale
    first, last = s.warmup_steps, s.warmup_steps + s.measured_steps
    marks: dict[int, float] = {}

    class StepClock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step in (first, last):
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                marks[state.global_step] = time.perf_counter()

    rows = [json.loads(line) for line in triples.read_text().splitlines()]
    data = Dataset.from_dict(
        {
            "anchor": [r["query"] for r in rows],
            "positive": [r["positives"][0] for r in rows],
            "negative": [r["negatives"][0] for r in rows],
        }
    )
    encoder = SentenceTransformer(model, device=s.device)
    args = SentenceTransformerTrainingArguments(
        output_dir=str(folder / f"trainer-{batch}"),
        per_device_train_batch_size=batch,
        max_steps=last,
        learning_rate=2e-5,
        warmup_ratio=0.1,
        bf16=s.mixed_precision == "bf16",
        report_to="none",
        save_strategy="no",
        logging_steps=last,  # one loss read at the end: no device sync per step
        seed=13,
        use_cpu=s.device == "cpu",
        dataloader_drop_last=True,
    )
    trainer = SentenceTransformerTrainer(
        model=encoder,
        args=args,
        train_dataset=data,
        loss=MultipleNegativesRankingLoss(encoder, scale=20.0),
        callbacks=[StepClock()],
    )
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    del trainer, encoder
    free_memory()
    return {"samples_per_s": round(s.measured_steps * batch / (marks[last] - marks[first]), 1), "losses": losses}


def train_throughput(ws: Workspace) -> dict:
    from bench_train import mfu, workload

    s = ws.scale
    peak = ws.peak()
    record: dict = {"peak": peak, "steps": {"warmup": s.warmup_steps, "measured": s.measured_steps}, "runs": []}
    triples = write_triples(
        ws.scratch / "throughput.jsonl", ws, (s.warmup_steps + s.measured_steps) * max(s.train_batches)
    )
    for shape in s.train_shapes:
        model = ws.encoder(shape)
        params, tokens = workload(model, triples)
        for batch in s.train_batches:
            cell = {"model": shape, "batch_size": batch, "non_embedding_parameters": params}
            cell["tokens_per_sample"] = round(tokens, 1)
            for name, measure in (("synthir", synthir_steady), ("sentence_transformers_trainer", trainer_steady)):
                try:
                    figures = measure(model, triples, batch, ws, ws.scratch / "train")
                    figures["mfu"] = mfu(figures["samples_per_s"] or 0.0, params, tokens, peak["flops"])
                except Exception as error:  # an OOM in one cell leaves the others to run
                    figures = {"error": f"{type(error).__name__}: {error}"}
                    free_memory()
                cell[name] = figures
            if torch.cuda.is_available():  # what a run left allocated would crowd out the next
                cell["gpu_memory_left_gib"] = round(torch.cuda.memory_allocated() / GIB, 3)
            record["runs"].append(cell)
            judge_throughput(record, cell, ws)
    return record


def judge_throughput(record: dict, cell: dict, ws: Workspace) -> None:
    ours, theirs = cell["synthir"], cell["sentence_transformers_trainer"]
    label = f"{cell['model']} batch {cell['batch_size']}"
    finite = all(math.isfinite(x) for x in ours.get("losses", [math.nan]) + theirs.get("losses", [math.nan]))
    criterion(record, f"{label}: both ran, losses finite", finite, finite, "no error, finite losses")
    if ws.smoke or not finite:
        return  # a CPU's speed says nothing about the GPU path
    ratio = round(ours["samples_per_s"] / theirs["samples_per_s"], 3)
    cell["speedup"] = ratio
    criterion(record, f"{label}: synthir / plain trainer samples/s", ratio >= 0.8, ratio, ">= 0.8")
    if cell["model"] == "bert-base" and cell["batch_size"] == max(ws.scale.train_batches):
        criterion(record, f"{label}: synthir MFU", ours["mfu"] >= 0.2, ours["mfu"], ">= 0.2 of the measured peak")


# --- 2. encoding and exact search ---


def encode_search(ws: Workspace) -> dict:
    from synthir.retrieval import load_encoder

    s = ws.scale
    record: dict = {"dtype": s.dtype, "batch_size": s.encode_batch, "queries": s.queries, "models": []}
    passages = ws.texts(max(s.corpus_sizes), s.passage_words, seed=7)
    queries = {f"q{i}": text for i, text in enumerate(ws.texts(s.queries, s.query_words, seed=8))}
    for shape in s.encode_shapes:
        model = load_encoder(ws.encoder(shape), s.max_seq_length, s.device, s.dtype, block="evaluate")
        figures: dict = {"model": shape, "dimensions": model.get_sentence_embedding_dimension()}
        sizes = {n: search_once(model, passages[:n], queries, s.encode_batch) for n in s.corpus_sizes}
        small, large = s.corpus_sizes
        run, timings, peak = sizes[large]
        figures["passages_per_s"] = round(large / timings["encode_corpus"], 1)
        figures["seconds"] = {k: round(v, 3) for k, v in timings.items()}
        figures |= memory_figures(sizes[small][2], peak, small, large)
        figures |= reference_check(model, passages[:large], queries, run, s.encode_batch)
        record["models"].append(figures)
        judge_search(record, figures, ws)
        del model
        free_memory()
    return record


def search_once(model, passages: list[str], queries: dict[str, str], batch: int) -> tuple[dict, dict, int | None]:
    """synthir's dense search over `passages` (embedding cache off): the run, its timings, and the peak GPU
    memory it added (None on the CPU)."""
    from synthir.retrieval import dense_search

    corpus = {f"d{i}": {"title": "", "text": text} for i, text in enumerate(passages)}
    on_gpu = model.device.type == "cuda"
    if on_gpu:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated() if on_gpu else 0
    timings: dict[str, float] = {}
    run = dense_search(model, corpus, queries, depth=TOP, batch_size=batch, timings=timings, cache=False)
    peak = torch.cuda.max_memory_allocated() - before if on_gpu else None
    return run, timings, peak


def memory_figures(small_peak: int | None, large_peak: int | None, small: int, large: int) -> dict:
    """Peak GPU memory at each corpus size, its growth per 100k documents, and that line extrapolated."""
    if large_peak is None:
        return {"gpu_memory": "not measured on the CPU"}
    per_100k = max(large_peak - small_peak, 0) / (large - small) * 100_000
    at = lambda n: round((large_peak + (n - large) / 100_000 * per_100k) / GIB, 3)  # noqa: E731
    return {
        "gpu_memory_gib": {f"{small}": round(small_peak / GIB, 3), f"{large}": round(large_peak / GIB, 3)},
        "gpu_memory_gib_per_100k": round(per_100k / GIB, 4),
        "gpu_memory_gib_extrapolated": {"1M": at(1_000_000), "5M": at(5_000_000)},
    }


def reference_check(model, passages: list[str], queries: dict[str, str], run: dict, batch: int) -> dict:
    """Each query's top-10 against a float64 exact search over the same model's embeddings (synthir's
    `retrieval.encode`): every hit returned must score, in float64, at least the reference's 10th score less
    SCORE_TOLERANCE (a tie may swap places with another)."""
    from synthir.retrieval import encode

    docs = torch.as_tensor(encode(model, passages, batch)).to(model.device, torch.float64)
    query_ids = list(queries)
    found = torch.as_tensor(encode(model, [queries[q] for q in query_ids], batch)).to(model.device, torch.float64)
    worst_shortfall, same_sets = 0.0, 0
    for start in range(0, len(query_ids), 256):
        scores = found[start : start + 256] @ docs.T
        tenth = scores.topk(TOP, dim=1).values[:, -1]
        exact = scores.topk(TOP, dim=1).indices.tolist()
        for row, query_id in enumerate(query_ids[start : start + 256]):
            hits = [int(d[1:]) for d in run.get(query_id, {})]
            if len(hits) != TOP:
                worst_shortfall = math.inf
                continue
            shortfall = float(tenth[row] - scores[row, hits].min())
            worst_shortfall = max(worst_shortfall, shortfall)
            same_sets += set(hits) == set(exact[row])
    return {"top10_worst_shortfall": worst_shortfall, "top10_identical_sets": f"{same_sets}/{len(query_ids)}"}


def judge_search(record: dict, figures: dict, ws: Workspace) -> None:
    label = figures["model"]
    shortfall = figures["top10_worst_shortfall"]
    criterion(record, f"{label}: top-10 = float64 exact top-10", shortfall <= SCORE_TOLERANCE, shortfall, "<= 1e-4")
    five_million = figures.get("gpu_memory_gib_extrapolated", {}).get("5M")
    if not ws.smoke and figures["dimensions"] >= 768 and five_million is not None:
        fits = five_million <= FITS_GIB
        criterion(record, f"{label}: 5M passages fit a 24 GB card", fits, five_million, f"<= {FITS_GIB} GiB")


# --- 3. the hf backend ---


def hf_backend(ws: Workspace) -> dict:
    from synthir.config import LLMParams
    from synthir.llm.base import Request, Sampling
    from synthir.llm.cached import open_backend
    from tests.tiny_models import CHAT_WORDS, save_causal_lm

    s = ws.scale
    path = save_causal_lm(ws.scratch / "qwen2", "qwen2")
    rng = random.Random(3)
    prompts = [" ".join(rng.choices(CHAT_WORDS, k=rng.randint(3, 40))) for _ in range(s.llm_prompts)]
    sampling = Sampling(max_tokens=s.llm_tokens)
    requests = [  # plain prompts and chats, alternately
        Request(prompt=p, sampling=sampling) if i % 2 else Request(messages=[user(p)], sampling=sampling)
        for i, p in enumerate(prompts)
    ]

    def backend(engine_batch: int, cache: str):
        options = {"device": s.device, "dtype": s.dtype, "batch_size": engine_batch}
        return open_backend(LLMParams(backend="hf", model=path, options=options, batch_size=64), ws.scratch / cache)

    batched, single = backend(16, "batched.sqlite"), backend(1, "single.sqlite")
    record: dict = {"model": "qwen2 (random, 2 layers, 32-d)", "device": str(getattr(batched.backend, "device", "?"))}
    start = time.perf_counter()
    texts = [c.texts for c in batched.generate(requests)]
    seconds = time.perf_counter() - start
    record["generate"] = {"requests": len(requests), "seconds": round(seconds, 3), **batched.stats.as_dict()}
    record["generate"]["tokens_per_s"] = round(batched.stats.tokens_out / seconds, 1)
    scores = batched.score_yes_no(prompts)
    singles, single_scores = [c.texts for c in single.generate(requests)], single.score_yes_no(prompts)
    before = batched.stats.as_dict()
    again, scores_again = [c.texts for c in batched.generate(requests)], batched.score_yes_no(prompts)
    reuse = batched.stats.counts_since(before)
    record["second_call"] = reuse
    judge_hf(record, texts, singles, again, scores, single_scores, scores_again, reuse, batched.stats, ws)
    for b in (batched, single):
        b.cache.close()
    return record


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def judge_hf(record, texts, singles, again, scores, single_scores, scores_again, reuse, stats, ws) -> None:
    failures, generated = stats.failures, stats.tokens_out
    criterion(record, "generation: no failure, tokens generated", not failures and generated > 0, generated, "> 0")
    finite = all(math.isfinite(x) for x in scores)
    criterion(record, "yes/no scores finite", finite, scores[:4], "all finite")
    differing = sum(a != b for a, b in zip(texts, singles, strict=True))
    criterion(record, "greedy outputs batched = one by one", differing == 0, differing, "0 prompts differ")
    drift = max(abs(a - b) / max(1.0, abs(b)) for a, b in zip(scores, single_scores, strict=True))
    limit = 0.05 if ws.scale.dtype == "bfloat16" else 1e-4
    criterion(record, "yes/no scores batched = one by one", drift <= limit, round(drift, 6), f"<= {limit} relative")
    served = reuse["calls"] == 0 and reuse["batches"] == 0 and again == texts and scores_again == scores
    criterion(record, "second identical call: from the cache, 0 engine calls", served, reuse["calls"], "0 calls")


# --- 4. the train stage: checkpoint, kill, resume ---


def train_stage(ws: Workspace) -> dict:
    from synthir.config import TrainParams
    from synthir.stage import accelerate_arguments

    s = ws.scale
    triples = write_triples(ws.scratch / "stage.jsonl", ws, s.stage_examples, seed=11)
    model = ws.encoder(s.stage_shape)
    whole, killed = (stage_project(ws.scratch / name, model, ws) for name in ("whole", "killed"))
    record: dict = {"model": s.stage_shape, "steps": STAGE_STEPS, "checkpoint_every": STAGE_CHECKPOINT_EVERY}
    record["train_params"] = train_block(whole)
    record["launch"] = accelerate_arguments(TrainParams(**record["train_params"]))
    uninterrupted = start_stage(whole, triples)  # alongside the run that is killed: the check's wall time
    record["killed"] = kill_after_checkpoint(killed, triples)
    done = finish_stage(uninterrupted)
    record["uninterrupted"] = {"exit": done.returncode, "seconds": done.seconds, **read_metrics(whole)}
    resumed = finish_stage(start_stage(killed, triples))
    record["resumed"] = {"exit": resumed.returncode, "seconds": resumed.seconds, **read_metrics(killed)}
    for name, run in (("uninterrupted", done), ("resumed", resumed)):
        if run.returncode:
            record[name]["log"] = run.log[-3000:]
    judge_stage(record, model, whole, killed, ws)
    return record


def stage_project(folder: Path, model: str, ws: Workspace) -> Path:
    """A project as `dvc repro` sees it: this repository's dvc.yaml, and its params.yaml with presets/gpu.yaml
    merged in, every bundled model replaced by the local encoder, and train set to 12 steps from that encoder
    with a checkpoint every 4 (on the CPU smoke test, train.device cpu and a batch of 8)."""
    from synthir.config import parse_params
    from synthir.models import check_reference
    from synthir.presets import merge
    from synthir.yamlfile import read_yaml

    values = read_yaml(REPO / "params.yaml")
    merge(values, read_yaml(REPO / "presets" / "gpu.yaml"))
    values = local_models(values, model)
    values["generate"].pop("prompts_dir", None)  # a folder of the repository, relative to it
    values["adapt"]["method"] = "none"
    train = values["train"]
    train |= {"base_model": model, "max_steps": STAGE_STEPS, "checkpoint_steps": STAGE_CHECKPOINT_EVERY}
    train |= {"max_seq_length": ws.scale.max_seq_length, "device": ws.scale.device}
    if ws.scale.stage_batch:
        train["batch_size"] = ws.scale.stage_batch
    folder.mkdir(parents=True)
    parse_params(values, "the GPU check's params", check_model=check_reference)  # refused here rather than in the stage
    (folder / "params.yaml").write_text(json.dumps(values, indent=1))  # JSON is YAML
    (folder / "dvc.yaml").write_bytes((REPO / "dvc.yaml").read_bytes())
    return folder


def local_models(value, model: str):
    """`value` with every bundled (pkg:) model reference replaced by `model`: none is installed on a GPU box."""
    if isinstance(value, dict):
        return {k: local_models(v, model) for k, v in value.items()}
    if isinstance(value, list):
        return [local_models(v, model) for v in value]
    return model if isinstance(value, str) and value.startswith("pkg:") else value


def train_block(project: Path) -> dict:
    return json.loads((project / "params.yaml").read_text())["train"]


@dataclass
class StageRun:
    returncode: int
    seconds: float
    log: str


@dataclass
class StartedStage:
    process: subprocess.Popen
    log: Path
    started: float


def start_stage(project: Path, triples: Path) -> StartedStage:
    """stages/train.py as dvc.yaml runs it (it relaunches itself under `accelerate launch`), in its own process
    group, its output in `project`/stage.log (a file: a full pipe would block it)."""
    paths = os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": paths, "HF_HUB_OFFLINE": "1", "DVC_NO_ANALYTICS": "1"}
    command = [sys.executable, str(REPO / "stages" / "train.py"), "--triples", str(triples)]
    command += ["--adapted", "models/adapted", "--output", "models/retriever", "--live", "dvclive/train"]
    command += ["--checkpoints", "data/checkpoints", "--metrics", "metrics/train.json"]
    log = project / "stage.log"
    with open(log, "ab") as sink:
        process = subprocess.Popen(command, cwd=project, env=env, stdout=sink, stderr=sink, start_new_session=True)
    return StartedStage(process, log, time.perf_counter())


def finish_stage(stage: StartedStage, timeout: float = 600) -> StageRun:
    try:
        stage.process.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(stage.process.pid, signal.SIGKILL)
        stage.process.wait()
    seconds = round(time.perf_counter() - stage.started, 1)
    return StageRun(stage.process.returncode, seconds, stage.log.read_text(errors="replace"))


def kill_after_checkpoint(project: Path, triples: Path) -> dict:
    """Start the stage, and SIGKILL its whole process group (launcher and trainer) as soon as a checkpoint
    is complete (renamed into place): as when the machine dies."""
    stage = start_stage(project, triples)
    checkpoints = project / "data" / "checkpoints"
    while stage.process.poll() is None and not list(checkpoints.glob("*/step-*")):
        if time.perf_counter() - stage.started > 600:
            break
        time.sleep(0.005)
    finished_first = stage.process.poll() is not None
    if not finished_first:
        os.killpg(stage.process.pid, signal.SIGKILL)
    run = finish_stage(stage)
    saved = sorted(p.name for p in checkpoints.glob("*/step-*"))
    outcome = {"exit": run.returncode, "seconds": run.seconds, "checkpoints": saved}
    if finished_first:
        outcome["log"] = run.log[-3000:]
    return outcome


def read_metrics(project: Path) -> dict:
    path = project / "metrics" / "train.json"
    return json.loads(path.read_text()) if path.exists() else {}


def weight_distance(project: Path, reference: Path, start: str) -> tuple[float, float]:
    """The largest absolute difference between two trained models' weights, and the distance between them as
    a share of how far training moved the reference from its start (L2 over all weights)."""
    from safetensors.torch import load_file

    ours, theirs = (load_file(p / "models" / "retriever" / "model.safetensors") for p in (project, reference))
    initial = load_file(Path(start) / "model.safetensors")
    largest, apart, moved = 0.0, 0.0, 0.0
    for name, tensor in theirs.items():
        difference = ours[name].double() - tensor.double()
        largest = max(largest, float(difference.abs().max()))
        apart += float(difference.pow(2).sum())
        moved += float((tensor.double() - initial[name].double()).pow(2).sum())
    return largest, math.sqrt(apart) / max(math.sqrt(moved), 1e-30)


def judge_stage(record: dict, model: str, whole: Path, killed: Path, ws: Workspace) -> None:
    ran = record["uninterrupted"]["exit"] == 0 and record["resumed"]["exit"] == 0
    criterion(record, "the stage ran (uninterrupted and resumed)", ran, ran, "exit 0")
    kill = record["killed"]
    cut = kill["exit"] == -signal.SIGKILL and bool(kill["checkpoints"])
    criterion(record, "killed after a checkpoint, before the end", cut, kill["exit"], "SIGKILL with a checkpoint")
    resumed_from = record["resumed"].get("resumed_from_step", 0)
    criterion(record, "resumed from that checkpoint", 0 < resumed_from < STAGE_STEPS, resumed_from, "0 < step < 12")
    steps = record["uninterrupted"].get("steps")
    criterion(record, "12 steps", steps == STAGE_STEPS, steps, "== 12")
    if not ran:
        return
    largest, share = weight_distance(killed, whole, model)
    record["weights"] = {"max_abs_difference": largest, "relative_distance": share}
    limit = 1e-2 if ws.scale.device == "cuda" else 1e-5  # cuDNN/SDPA backward passes are not bit-reproducible
    criterion(record, "resumed weights = uninterrupted weights", share <= limit, share, f"<= {limit} of the update")


# --- the run ---

SECTIONS: dict[str, Callable[[Workspace], dict]] = {
    "train_throughput": train_throughput,
    "encode_search": encode_search,
    "hf_backend": hf_backend,
    "train_stage": train_stage,
}


def run_section(name: str, ws: Workspace, out: Path) -> dict:
    """One section: its record with pass/fail and seconds, written to `out`/<name>.json whatever happens."""
    start = time.perf_counter()
    print(f"== {name}", flush=True)
    try:
        record = SECTIONS[name](ws)
        record["pass"] = bool(record.get("criteria")) and all(c["pass"] for c in record["criteria"])
    except Exception as error:
        record = {"pass": False, "error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()}
        print(record["traceback"], file=sys.stderr, flush=True)
    record = {"section": name, "mode": "cpu-smoke" if ws.smoke else "gpu", **record}
    record["seconds"] = round(time.perf_counter() - start, 1)
    (out / f"{name}.json").write_text(json.dumps(record, indent=2, default=str) + "\n")
    free_memory()
    return record


def machine() -> dict:
    import sentence_transformers
    import transformers

    found = {"torch": torch.__version__, "cuda": torch.version.cuda, "transformers": transformers.__version__}
    found["sentence_transformers"] = sentence_transformers.__version__
    found["device"] = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    return found


def summary_table(records: list[dict], total: float) -> str:
    lines = [f"{'section':<18} {'result':<6} {'seconds':>8}  figures / first failed criterion"]
    for r in records:
        failed = next((c for c in r.get("criteria", []) if not c["pass"]), None)
        note = r.get("error") or (f"FAILED {failed['name']}: {failed['value']} ({failed['limit']})" if failed else "")
        lines.append(f"{r['section']:<18} {'pass' if r['pass'] else 'FAIL':<6} {r['seconds']:>8.1f}  {headline(r)}")
        if note:
            lines.append(f"{'':<35}{note[:160]}")
    lines.append(f"{'total':<18} {'':<6} {total:>8.1f}")
    return "\n".join(lines)


def headline(record: dict) -> str:
    """The section's key figures, on one line."""
    if record["section"] == "train_throughput":
        return "; ".join(
            f"{c['model']}@{c['batch_size']} {c['synthir'].get('samples_per_s')} vs "
            f"{c['sentence_transformers_trainer'].get('samples_per_s')} /s mfu {c['synthir'].get('mfu')}"
            for c in record.get("runs", [])
        )
    if record["section"] == "encode_search":
        return "; ".join(
            f"{m['model']} {m['passages_per_s']} passages/s, 5M: "
            f"{m.get('gpu_memory_gib_extrapolated', {}).get('5M', '-')} GiB"
            for m in record.get("models", [])
        )
    if record["section"] == "hf_backend":
        return f"{record.get('generate', {}).get('tokens_per_s', '-')} tokens/s on {record.get('device', '?')}"
    if record["section"] == "train_stage":
        return f"resumed from {record.get('resumed', {}).get('resumed_from_step', '-')}, {record.get('weights', {})}"
    return ""


@contextmanager
def private_caches(scratch: Path) -> Iterator[None]:
    """synthir's caches (embeddings, encoders, completions) under `scratch` while the check runs: no cache of
    the user's is read or written."""
    before = os.environ.get("SYNTHIR_CACHE_DIR")
    os.environ["SYNTHIR_CACHE_DIR"] = str(scratch / "cache")
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("SYNTHIR_CACHE_DIR")
        else:
            os.environ["SYNTHIR_CACHE_DIR"] = before


def default_out() -> Path:
    return Path(os.environ["OUT"]) if os.environ.get("OUT") else REPO / "benchmarks" / "results" / "gpu-check"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu-smoke", action="store_true", help="every section reduced, on the CPU")
    where = "folder of the JSON files (default: $OUT if set, else benchmarks/results/gpu-check)"
    parser.add_argument("--out", type=Path, default=None, help=where)
    parser.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated subset, in order")
    args = parser.parse_args(argv)
    names = [n for n in args.sections.split(",") if n]
    unknown = [n for n in names if n not in SECTIONS]
    if unknown:
        parser.error(f"--sections: unknown section {unknown[0]!r} (choose from {', '.join(SECTIONS)})")
    if not args.cpu_smoke and not torch.cuda.is_available():
        parser.error("torch sees no GPU here: run the reduced check with --cpu-smoke")
    out = args.out or default_out()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        parser.error(f"--out {out}: cannot be made a folder ({error.strerror})")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as scratch, private_caches(Path(scratch)):
        ws = Workspace(SMOKE if args.cpu_smoke else GPU, Path(scratch), args.cpu_smoke)
        print(json.dumps(machine()), flush=True)
        records = [run_section(name, ws, out) for name in names]
    table = summary_table(records, time.perf_counter() - started)
    print(table)
    (out / "summary.txt").write_text(table + "\n")
    return 0 if all(r["pass"] for r in records) else 1


if __name__ == "__main__":
    raise SystemExit(main())
