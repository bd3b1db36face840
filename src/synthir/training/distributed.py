"""What the processes of one training run do together: gather each other's rows, agree on a value before they
act on it, build model caches one process per machine first, and end the process group."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from ..errors import ConfigError, excerpt


def gather_rows(local: torch.Tensor, counts: list[int], rank: int) -> torch.Tensor:
    """Every process's rows, in rank order (`counts[r]` rows from process r). This process's own rows keep their
    autograd graph; the others' are constants here, and their gradient is computed where they were embedded."""
    if len(counts) == 1:
        return local
    import torch.distributed as dist

    padded = local.detach().new_zeros((max(counts), *local.shape[1:]))
    padded[: local.shape[0]] = local.detach()
    pieces = [torch.empty_like(padded) for _ in counts]
    dist.all_gather(pieces, padded)
    pieces[rank] = local
    return torch.cat([piece[:count] for piece, count in zip(pieces, counts, strict=True)])


@contextmanager
def builders_first(accelerator) -> Iterator[None]:
    """Process 0 first, then the first process of every other machine, then the rest: what loading a model
    builds into the cache (a joined multi-part model, `synthir.models`; an encoder built from a plain or GGUF
    model, `synthir.backbones`) is built by one process per machine while the others wait at a barrier, and
    then read. A cache shared by the machines is built once."""
    with accelerator.main_process_first(), accelerator.local_main_process_first():
        yield


def agreed(accelerator, value: str, differs: str) -> str:
    """`value` if every process holds the same; else a ConfigError saying how the first process that differs
    from process 0 `differs` (the processes of several machines each read their own files)."""
    from accelerate.utils import gather_object

    values = gather_object([value]) if accelerator.num_processes > 1 else [value]
    other = next((rank for rank, seen in enumerate(values) if seen != values[0]), None)
    if other is not None:
        raise ConfigError(f"train: process {other} {differs} ({excerpt(values[other])} against {excerpt(values[0])})")
    return value


def end_distributed() -> None:
    """Destroy the process group, if a distributed run made one (at the end of a training stage: with NCCL, a
    process that exits with its group alive gets torch's warning and may leak; gloo says nothing)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
