"""The training example: a query with positives and negatives, and what each of them is.

`positive_ids` holds a document id, or "synthetic" for a generated positive (Syntriever's p+ and CoT text).
`negative_ids` holds a mined document's id, or the kind of a generated negative: "synthetic" (Syntriever's p−),
"relabeled" (a synthetic positive the judge rejected) or "generated" (query_negative, Don't Retrieve, Generate).
"""

from __future__ import annotations

SYNTRIEVER_NEGATIVES = ("synthetic", "relabeled")
"""A Syntriever set's own negatives: every one enters the loss (`train.num_negatives` bounds the others)."""


def negative_kind(negative_id: str) -> str:
    """The kind of a negative: its id when generated (synthetic, relabeled, generated), else mined."""
    return negative_id if negative_id in (*SYNTRIEVER_NEGATIVES, "generated") else "mined"


def positive_kind(positive_id: str) -> str:
    """The kind of a positive: synthetic (generated) or document (a corpus passage)."""
    return "synthetic" if positive_id == "synthetic" else "document"


def batch_keys(example: dict) -> tuple[str, ...]:
    """What two examples of one batch may not share: the query (another example of it would put its positives
    among the in-batch negatives) and the first positive (an in-batch false negative for the other query)."""
    first = example["positive_ids"][0] if example.get("positive_ids") else "synthetic"
    positive = first if first != "synthetic" else example["positives"][0]
    return (f"query:{example['query_id']}", f"positive:{positive}")
