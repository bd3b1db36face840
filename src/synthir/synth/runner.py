"""Running one task's requests through a cached backend, with progress, stats and provenance."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

from ..llm.base import Completion, Request, Sampling
from ..llm.cached import CachedBackend
from ..llm.progress import LLMProgress
from ..prompting import Template


@dataclass
class TaskStats:
    requests: int = 0
    samples: int = 0
    failed: int = 0
    rejected: int = 0
    """Samples whose text was unusable (empty, echoed, a refusal, too short)."""
    duplicates: int = 0
    records: int = 0
    seconds: float = 0.0
    llm: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {**asdict(self), "seconds": round(self.seconds, 2)}


class TaskRunner:
    """Sends a task's requests in batches (each committed to the cache as it returns) and counts."""

    def __init__(self, backend: CachedBackend) -> None:
        self.backend = backend

    def run(self, requests: list[Request], stats: TaskStats, desc: str) -> list[Completion]:
        before = self.backend.stats.as_dict()
        started = time.perf_counter()
        results: list[Completion] = []
        step = self.backend.batch_size
        with LLMProgress(self.backend, len(requests), desc) as progress:
            for start in range(0, len(requests), step):
                results += self.backend.generate(requests[start : start + step])
                progress.advance(min(step, len(requests) - start))
        stats.requests += len(requests)
        stats.samples += sum(r.n for r in requests)
        stats.failed += sum(r.failed for r in results)
        stats.seconds += time.perf_counter() - started
        for key, value in self.backend.stats.counts_since(before).items():
            stats.llm[key] = stats.llm.get(key, 0) + value
        return results

    def provenance(self, template: Template, sampling: Sampling, sample: int, **extra) -> dict:
        """Who wrote a record (backend, server, model: the cache's identity) and how."""
        return {
            **self.backend.identity,
            "template": template.version,
            "sampling": sampling.as_dict(),
            "sample": sample,
            **extra,
        }
