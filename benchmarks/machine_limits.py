"""This machine's limits, the yardsticks for the other benchmarks: sustained memory bandwidth (what bounds LLM
decode: every generated token reads all the weights) and GEMM peak (what bounds prefill and training): float32,
bfloat16, and int8 (`torch._int_mm`, the yardstick for llama.cpp's quantized matmuls, which multiply int8
activations with 4-8 bit weights; on this CPU it runs on AMX tiles).

    python benchmarks/machine_limits.py                     # all threads torch uses
    python benchmarks/machine_limits.py --threads 1 --gemm-size 1024

Bandwidth is a STREAM-style copy (bytes read + bytes written per second, best of `--repeats`) over arrays far
larger than the caches; GEMM peak is the best of `--repeats` square matrix products per dtype. Both run with
torch's intra-op threads, as llama.cpp and training use every core.
"""

from __future__ import annotations

import argparse
import json
import time

import torch


def best_seconds(run, repeats: int, sync=lambda: None) -> float:
    """The fastest of `repeats` timed runs after one warm-up; `sync` waits for queued work (a GPU's)."""
    run()  # warm-up: page faults, kernel selection
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        sync()
        times.append(time.perf_counter() - start)
    return min(times)


def copy_bandwidth(megabytes: int, repeats: int) -> float:
    """GB/s moved by a large tensor copy (read + write)."""
    source = torch.ones(megabytes * 2**20 // 4, dtype=torch.float32)
    target = torch.empty_like(source)
    seconds = best_seconds(lambda: target.copy_(source), repeats)
    return 2 * source.numel() * 4 / seconds / 1e9


def gemm_flops(size: int, dtype: torch.dtype, repeats: int, device: str = "cpu") -> float:
    """GFLOP/s of a [size, size] @ [size, size] product on `device` (benchmarks/gpu_check.py: a GPU's)."""
    a, b = (torch.randn(size, size, device=device).to(dtype) for _ in range(2))
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else lambda: None
    seconds = best_seconds(lambda: torch.mm(a, b), repeats, sync)
    return 2 * size**3 / seconds / 1e9


def int8_gemm_gops(size: int, repeats: int) -> float | None:
    """GOP/s of an int8 [size, size] @ [size, size] product (int32 sums); None where torch has no CPU kernel."""
    a = torch.randint(-128, 128, (size, size), dtype=torch.int8)
    b = torch.randint(-128, 128, (size, size), dtype=torch.int8)
    try:
        seconds = best_seconds(lambda: torch._int_mm(a, b), repeats)
    except RuntimeError:
        return None
    return 2 * size**3 / seconds / 1e9


def measure(megabytes: int = 1024, gemm_size: int = 2048, repeats: int = 5) -> dict:
    flops = {
        name: round(gemm_flops(gemm_size, dtype, repeats), 1)
        for name, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16))
    }
    int8 = int8_gemm_gops(gemm_size, repeats)
    return {
        "threads": torch.get_num_threads(),
        "copy_gb_per_s": round(copy_bandwidth(megabytes, repeats), 1),
        "gemm_gflops": flops | ({"int8": round(int8, 1)} if int8 else {}),
        "copy_megabytes": megabytes,
        "gemm_size": gemm_size,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--megabytes", type=int, default=1024, help="size of each copied array")
    parser.add_argument("--gemm-size", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(json.dumps(measure(args.megabytes, args.gemm_size, args.repeats), indent=2))


if __name__ == "__main__":
    main()
