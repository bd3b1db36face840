"""A progress bar for LLM work: requests (or prompts) per second and an ETA, with what the backend actually did."""

from __future__ import annotations

import time

from tqdm.auto import tqdm

from .cached import CachedBackend


class LLMProgress:
    """tqdm's rate and ETA, plus fresh calls, cache hits and generated tokens/s since the bar opened.

    A rerun's cache hits finish at once, so the ETA settles once fresh calls dominate the recent rate."""

    def __init__(self, backend: CachedBackend, total: int, desc: str, unit: str = "req") -> None:
        self.backend = backend
        self.bar = tqdm(total=total, desc=desc, unit=unit, disable=not total, smoothing=0.1)
        self._start = backend.stats.as_dict()
        self._started = time.perf_counter()

    def advance(self, count: int) -> None:
        done = self.backend.stats.counts_since(self._start)
        elapsed = max(time.perf_counter() - self._started, 1e-9)
        self.bar.set_postfix(
            calls=done["calls"],
            hits=done["cache_hits"],
            gen_tok_s=f"{done['tokens_out'] / elapsed:.1f}",
            refresh=False,
        )
        self.bar.update(count)

    def __enter__(self) -> LLMProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.close()
