import json

import pytest
import torch
from sentence_transformers import SentenceTransformer

from synthir.config import TrainParams
from synthir.fileio import write_jsonl
from synthir.losses import mnrl_loss, snn_loss
from synthir.train import Corpus, Encoded, batch_loss_fn, bucketed_batches, train


def test_pad_is_one_vectorised_copy():
    corpus = Corpus([torch.tensor([5, 6, 7]).numpy(), torch.tensor([8]).numpy()], pad_id=0)
    batch = corpus.pad([1, 0], "cpu")
    assert batch["input_ids"].tolist() == [[8, 0, 0], [5, 6, 7]]
    assert batch["attention_mask"].tolist() == [[1, 0, 0], [1, 1, 1]]


def test_batches_cover_every_example_once_and_never_repeat_a_query_or_positive():
    import numpy as np

    keys = [(f"query:q{i % 11}", f"positive:doc{i % 7}") for i in range(70)]  # ten examples share each positive
    corpus = Corpus([np.arange(1 + i % 5) for i in range(70)], 0)
    data = Encoded(list(range(70)), [[i] for i in range(70)], [[] for _ in range(70)], keys)
    batches = bucketed_batches(data, corpus, batch_size=7, seed=1, bucket=2)
    assert sorted(i for b in batches for i in b) == list(range(70))  # nothing dropped, nothing twice
    assert sum(len(b) == 7 for b in batches) >= 8  # full batches first; only the leftovers form smaller ones
    for batch in batches:
        assert all(len({keys[i][part] for i in batch}) == len(batch) for part in (0, 1))


def test_batch_losses_match_the_loss_functions():
    torch.manual_seed(0)
    q, p = torch.randn(2, 4), torch.randn(5, 4)
    # query 0: positive slot 0, negative slot 1; query 1: positive slot 2, negative slots 3, 4
    pos, neg = [[0], [2]], [[1], [3, 4]]
    got = batch_loss_fn("mnrl", 0.05)(q, p, pos, neg)
    # mnrl_loss takes per-query negatives; with unequal counts compare on the flat candidate set instead
    from synthir.losses import mnrl_from_scores, similarity

    assert got == pytest.approx(mnrl_from_scores(similarity(q, p[[0, 2, 1, 3, 4]], 0.05)).item())
    even = batch_loss_fn("mnrl", 0.05)(q, p[:4], [[0], [2]], [[1], [3]])
    assert even == pytest.approx(mnrl_loss(q, p[[0, 2]], p[[1, 3]].unsqueeze(1), tau=0.05).item(), rel=1e-5)
    snn = batch_loss_fn("snn", 0.05)(q, p[:4], [[0, 1], [2]], [[], [3]])
    pos_emb = torch.stack([p[[0, 1]], torch.stack([p[2], p[2]])])
    expected = snn_loss(
        q,
        pos_emb,
        torch.tensor([[True, True], [True, False]]),
        p[[3]].unsqueeze(0).expand(2, 1, 4),
        torch.tensor([[False], [True]]),
        tau=0.05,
    )
    assert snn == pytest.approx(expected.item(), rel=1e-5)


def test_alignment_batch_losses_by_hand():
    # two queries, each with its (c+, c−) at passage slots (0, 1) and (2, 3); unit vectors make cosines exact
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    p = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0], [0.8, 0.6]])
    pos, neg, tau = [[0], [2]], [[1], [3]], 0.5
    s = (q @ p.T) / tau  # rows: query; columns c+_1, c−_1, c+_2, c−_2
    import math

    def pl(row, first, second):
        z1 = sum(math.exp(v) for v in row)
        z2 = sum(math.exp(v) for j, v in enumerate(row) if j != first)
        return -(row[first] - math.log(z1) + row[second] - math.log(z2))

    rows = s.tolist()
    expected_pl = (pl(rows[0], 0, 1) + pl(rows[1], 2, 3)) / 2
    assert batch_loss_fn("partial_pl", tau)(q, p, pos, neg).item() == pytest.approx(expected_pl, rel=1e-5)
    bt = lambda a, b: math.log1p(math.exp(-(a - b)))  # −log σ(a − b)  # noqa: E731
    expected_bt = (bt(rows[0][0], rows[0][1]) + bt(rows[1][2], rows[1][3])) / 2
    assert batch_loss_fn("bt", tau)(q, p, pos, neg).item() == pytest.approx(expected_bt, rel=1e-5)
    with pytest.raises(ValueError, match="rejected passage"):
        batch_loss_fn("bt", tau)(q, p, pos, [[1], []])


@pytest.fixture
def triples(tmp_path):
    rows = [
        {
            "query_id": f"q{i}",
            "query": f"question about topic {i}",
            "positive_ids": [f"d{i}", "synthetic"],
            "positives": [f"topic {i} is explained here in some detail", f"synthetic passage {i}"],
            "negatives": [f"unrelated passage {i}"],
            "source": "train",
        }
        for i in range(12)
    ]
    path = tmp_path / "train.jsonl"
    write_jsonl(path, rows)
    return path


@pytest.mark.parametrize("loss", ["mnrl", "snn"])
def test_train_saves_a_loadable_model_with_card_and_logs(tmp_path, tiny_encoder, triples, loss):
    params = TrainParams(base_model=tiny_encoder, loss=loss, batch_size=4, epochs=2, lr=1e-3)
    summary = train(params, triples, tmp_path / "model", tmp_path / "live", tmp_path / "ckpt")
    assert summary["steps"] == 6
    model = SentenceTransformer(str(tmp_path / "model"), device="cpu")
    base = SentenceTransformer(tiny_encoder, device="cpu")
    assert model.encode(["hello"]).shape == (1, 32)
    trained, original = model.state_dict(), base.state_dict()
    assert trained.keys() == original.keys()
    moved = [name for name in trained if not torch.allclose(trained[name], original[name], atol=1e-6)]
    assert len(moved) >= len(trained) // 2, "training must update the encoder's weights"
    card = (tmp_path / "model" / "README.md").read_text()
    assert str(triples) in card and f'"loss": "{loss}"' in card
    logged = json.loads((tmp_path / "live" / "metrics.json").read_text())
    assert logged["step"] == 5 and "loss" in logged["train"]


def test_train_resumes_from_its_last_checkpoint(tmp_path, tiny_encoder, triples):
    params = TrainParams(base_model=tiny_encoder, batch_size=4, max_steps=3, checkpoint_steps=2)
    first = train(params, triples, tmp_path / "a", tmp_path / "live-a", tmp_path / "ckpt")
    assert first["resumed_from_step"] == 0 and any((tmp_path / "ckpt").glob("*/step-2"))
    again = train(params, triples, tmp_path / "b", tmp_path / "live-b", tmp_path / "ckpt")
    assert again["resumed_from_step"] == 2 and again["steps"] == 3


def test_a_run_that_did_not_happen_has_empty_curves_of_the_same_names(tmp_path, tiny_encoder, triples):
    from synthir.train import write_empty_curves

    params = TrainParams(base_model=tiny_encoder, batch_size=4, max_steps=1)
    train(params, triples, tmp_path / "model", tmp_path / "ran", tmp_path / "ckpt")
    write_empty_curves(tmp_path / "off")
    ran = sorted(p.relative_to(tmp_path / "ran") for p in (tmp_path / "ran" / "plots").rglob("*.tsv"))
    off = sorted(p.relative_to(tmp_path / "off") for p in (tmp_path / "off" / "plots").rglob("*.tsv"))
    assert ran == off and len(off) == 2
    for path in off:
        header = (tmp_path / "off" / path).read_text()
        assert header == (tmp_path / "ran" / path).read_text().splitlines(keepends=True)[0]


def _example(query_id: str, gold: str, negative_ids: list[str], positives: int = 1) -> dict:
    return {
        "query_id": query_id,
        "query": f"query {query_id}",
        "positive_ids": [gold] + ["synthetic"] * (positives - 1),
        "positives": [f"gold {gold}"] + [f"synthetic positive {i} of {query_id}" for i in range(positives - 1)],
        "negative_ids": negative_ids,
        "negatives": [f"{kind} negative of {query_id}" for kind in negative_ids],
        "source": "syntriever",
    }


def test_every_syntriever_negative_reaches_the_loss_and_num_negatives_bounds_the_mined_ones():
    """Bug: negatives[:num_negatives] cut the relabeled hallucination (Syntriever's point) and mined negatives."""
    from synthir.train import encode_examples
    from tests.conftest import minilm_tokenizer

    examples = [_example("q1", "d1", ["synthetic", "relabeled", "d7", "d8"], positives=3)]
    _, data = encode_examples(examples, minilm_tokenizer(), 64, "", "", True, 1)
    assert len(data.negatives[0]) == 3  # synthetic + relabeled + one mined (num_negatives: 1)
    assert data.negative_kinds[0] == ["synthetic", "relabeled", "mined"]
    assert data.positive_kinds[0] == ["document", "synthetic", "synthetic"]


def test_alignment_trains_on_every_judged_pair_once_per_epoch():
    """Bug: with max_queries equal to the batch size, batches of distinct queries dropped most pairs."""
    from synthir.preferences import preference_examples
    from synthir.train import bucketed_batches, encode_examples
    from tests.conftest import minilm_tokenizer

    rng = __import__("random").Random(0)
    corpus = {f"d{i}": {"title": "", "text": f"passage {i}"} for i in range(200)}
    prefs = []
    for q in range(32):  # 32 queries with 1-10 pairs each: 174 pairs
        for _ in range(1 + (q * 7) % 10):
            a, b = rng.sample(range(200), 2)
            prefs.append(
                {"query_id": f"q{q}", "query": f"query {q}", "preferred": f"d{a}", "rejected": f"d{b}", "margin": 1.0}
                | {"preferred_rank": 1, "rejected_rank": 2}
            )
    examples = preference_examples(prefs, corpus)
    text_corpus, data = encode_examples(examples, minilm_tokenizer(), 32, "", "", True, 1)
    batches = bucketed_batches(data, text_corpus, batch_size=32, seed=13)
    trained = sorted(i for batch in batches for i in batch)
    assert trained == list(range(len(examples))), f"{len(examples) - len(set(trained))} pairs never trained"
    for batch in batches:  # partial Plackett-Luce needs one pair per query in a batch
        assert len({examples[i]["query_id"] for i in batch}) == len(batch)
