"""Shards of the generate stage's work, so that machines can generate disjoint parts of one sample.

Shard i of N holds the documents (and the Syntriever training queries) whose id hashes to i modulo N: the same on
every machine and whatever the order of the sample, so N shards are disjoint and cover the sample exactly.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass

from ..errors import ConfigError, excerpt

MAX_SHARDS = 100_000
"""More shards than any fleet of machines would use; a larger N is a typo."""

_SHARD = re.compile(r"([0-9]{1,6})/([0-9]{1,6})")


@dataclass(frozen=True)
class Shard:
    """Shard `index` of `count` (0 <= index < count)."""

    index: int
    count: int

    def holds(self, item_id: str) -> bool:
        digest = hashlib.sha256(item_id.encode("utf-8")).digest()
        return int.from_bytes(digest[:8], "big") % self.count == self.index

    def select(self, ids: Iterable[str]) -> list[str]:
        """The ids of this shard, in their order."""
        return [i for i in ids if self.holds(i)]

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def parse_shard(text: str, flag: str = "--shard") -> Shard:
    """`i/N` as a Shard; a ConfigError naming `flag` for anything else."""
    match = _SHARD.fullmatch(text)
    shard = Shard(int(match[1]), int(match[2])) if match else None
    if shard is None or not 0 <= shard.index < shard.count <= MAX_SHARDS:
        raise ConfigError(
            f"{flag}: expected i/N, shard i of N with 0 <= i < N <= {MAX_SHARDS:,} (e.g. 0/4), got {excerpt(text)}"
        )
    return shard
