"""The training set tokenized once: every distinct text's token ids in a `TokenTable`, and each example as indices
into it (`Encoded`). A batch is then a list of indices, and padding one vectorised copy."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import ConfigError
from ..triples.examples import SYNTRIEVER_NEGATIVES, batch_keys, negative_kind, positive_kind
from .losses import host_to_device


@dataclass
class TokenTable:
    """Every distinct text of the training set, tokenized once: ids[i] is text i's token ids."""

    ids: list[np.ndarray]
    pad_id: int

    @classmethod
    def build(cls, tokenizer, texts: list[str], max_length: int, batch: int = 4096) -> TokenTable:
        ids = []
        for start in range(0, len(texts), batch):
            encoded = tokenizer(texts[start : start + batch], truncation=True, max_length=max_length)["input_ids"]
            ids += [np.asarray(x, dtype=np.int64) for x in encoded]
        return cls(ids, tokenizer.pad_token_id or 0)

    def pad(self, indices: list[int], device) -> dict[str, torch.Tensor]:
        lengths = np.fromiter((len(self.ids[i]) for i in indices), dtype=np.int64, count=len(indices))
        tokens = np.full((len(indices), int(lengths.max())), self.pad_id, dtype=np.int64)
        mask = np.arange(tokens.shape[1])[None, :] < lengths[:, None]
        tokens[mask] = np.concatenate([self.ids[i] for i in indices])
        return {
            "input_ids": host_to_device(torch.from_numpy(tokens), device),
            "attention_mask": host_to_device(torch.from_numpy(mask.astype(np.int64)), device),
        }


@dataclass
class Encoded:
    """The training set as indices into a `TokenTable`: per example a query, positives and negatives."""

    query: list[int]
    positives: list[list[int]]
    negatives: list[list[int]]
    keys: list[tuple[str, ...]]
    """What examples of one batch may not share (`synthir.triples.examples.batch_keys`)."""
    positive_kinds: list[list[str]] = field(default_factory=list)
    negative_kinds: list[list[str]] = field(default_factory=list)
    margins: list[list[float]] | None = None
    """Per example, the teacher's score of the first positive minus each trained negative's (distillation)."""

    def kinds_trained(self, batches: list[list[int]]) -> dict[str, dict[str, int]]:
        """How many positives and negatives of each kind (`synthir.triples.examples`) the batches put into the loss."""
        positives, negatives = Counter(), Counter()
        for i in (i for batch in batches for i in batch):
            positives.update(self.positive_kinds[i])
            negatives.update(self.negative_kinds[i])
        return {"positives": dict(sorted(positives.items())), "negatives": dict(sorted(negatives.items()))}


def trained_negatives(ids: list[str], num_negatives: int) -> list[int]:
    """Positions of the negatives an example trains on, from their ids: every Syntriever negative (synthetic and
    relabeled), and the first `num_negatives` of the others (mined or generated)."""
    own = [i for i, d in enumerate(ids) if d in SYNTRIEVER_NEGATIVES]
    others = [i for i, d in enumerate(ids) if d not in SYNTRIEVER_NEGATIVES][:num_negatives]
    return sorted(own + others)


def encode_examples(
    examples: list[dict],
    tokenizer,
    max_length: int,
    query_prefix: str,
    passage_prefix: str,
    all_positives: bool,
    num_negatives: int,
    distillation: str | None = None,
) -> tuple[TokenTable, Encoded]:
    """Tokenize every distinct text once. `all_positives`: every positive of an example (snn), else the first
    (mnrl, and the alignment losses' c+). `distillation`: the loss (train.loss) that learns from the teacher
    margins of each trained negative, from the examples' `teacher` scores (`synthir.triples.teacher`); None: no
    margins."""
    index: dict[str, int] = {}

    def slot(text: str) -> int:
        return index.setdefault(text, len(index))

    data = Encoded([], [], [], [], margins=[] if distillation else None)
    for number, e in enumerate(examples, start=1):
        positive_ids = _padded(e.get("positive_ids", []), len(e["positives"]), "document")
        negative_ids = _padded(e.get("negative_ids", []), len(e["negatives"]), "mined")
        kept_positives = range(len(e["positives"]) if all_positives else 1)
        kept_negatives = trained_negatives(negative_ids, num_negatives)
        data.query.append(slot(query_prefix + e["query"]))
        data.positives.append([slot(passage_prefix + e["positives"][i]) for i in kept_positives])
        data.negatives.append([slot(passage_prefix + e["negatives"][i]) for i in kept_negatives])
        data.keys.append(batch_keys(e))
        data.positive_kinds.append([positive_kind(positive_ids[i]) for i in kept_positives])
        data.negative_kinds.append([negative_kind(negative_ids[i]) for i in kept_negatives])
        if data.margins is not None:
            data.margins.append(teacher_margins(e, kept_negatives, number, distillation))
    return TokenTable.build(tokenizer, list(index), max_length), data


def teacher_margins(example: dict, negatives: list[int], number: int, loss: str) -> list[float]:
    """The teacher's score of the example's first positive minus that of each of the given negatives; `loss`
    (train.loss) is named by the error when the example has no teacher scores."""
    teacher = example.get("teacher")
    if not teacher or len(teacher.get("negatives", [])) < len(example["negatives"]):
        raise ConfigError(
            f"training example {number} ({example.get('query_id', '?')}) has no teacher score for every negative: "
            f"train.loss {loss} distils triples.teacher's scores (set triples.teacher.method)"
        )
    return [teacher["positive"] - teacher["negatives"][i] for i in negatives]


def _padded(ids: list[str], length: int, filler: str) -> list[str]:
    """An example's ids, one per item (hand-written triples may leave them out)."""
    return list(ids[:length]) + [filler] * (length - len(ids))
