import numpy as np
import pytest

from synthir.data.sampling import sample_ids

IDS = [f"doc{i}" for i in range(101)]


def test_fractions_are_nested_prefixes():
    quarter, half, full = (sample_ids(IDS, f, seed=13) for f in (0.25, 0.5, 1.0))
    assert (len(quarter), len(half), len(full)) == (26, 51, 101)  # ceil(f * N)
    assert half[: len(quarter)] == quarter and full[: len(half)] == half
    assert sorted(full) == sorted(IDS)


def test_deterministic_and_independent_of_input_order():
    assert sample_ids(IDS, 0.3, 7) == sample_ids(list(reversed(IDS)), 0.3, 7)
    assert sample_ids(IDS, 0.3, 7) != sample_ids(IDS, 0.3, 8)


@pytest.mark.parametrize("fraction", [0, -0.1, 1.01])
def test_fraction_range(fraction):
    with pytest.raises(ValueError, match="fraction must be in"):
        sample_ids(IDS, fraction, 1)


def test_diverse_order_is_nested_and_reaches_every_cluster_first():
    from synthir.data.sampling import diverse_order, take_fraction

    rng = np.random.default_rng(0)
    big = rng.normal(0, 0.1, size=(90, 4)) + np.array([5, 0, 0, 0])  # one large cluster and two small, far apart
    small = [rng.normal(0, 0.1, size=(5, 4)) + centre for centre in ([0, 5, 0, 0], [0, 0, 5, 0])]
    embeddings = np.vstack([big, *small])
    ids = [f"big{i}" for i in range(90)] + [f"a{i}" for i in range(5)] + [f"b{i}" for i in range(5)]
    order = diverse_order(ids, embeddings, clusters=3, seed=1)
    kind = lambda doc_id: doc_id.rstrip("0123456789")  # noqa: E731
    assert sorted(order) == sorted(ids)
    assert {kind(d) for d in order[:3]} == {"big", "a", "b"}  # one of each cluster first
    assert sum(kind(d) != "big" for d in take_fraction(order, 0.15)) == 10  # the small clusters, all in 15%
    assert take_fraction(order, 0.3)[:15] == take_fraction(order, 0.15)  # nested
    assert diverse_order(list(reversed(ids)), embeddings[::-1], 3, 1) == order  # input order does not matter


def test_the_sample_stage_writes_the_fractions_ids_and_says_how_many(tmp_path, capsys):
    from synthir.config import SampleParams
    from synthir.data.sample import sample_stage
    from tests.conftest import write_beir

    data = write_beir(tmp_path / "data")
    sample_stage(SampleParams(fraction=0.5, seed=3), data, tmp_path / "ids.txt")
    assert (tmp_path / "ids.txt").read_text().split() == sample_ids(["d1", "d2", "d3"], 0.5, 3)
    assert capsys.readouterr().out == "sampled 2 documents (random, fraction 0.5, seed 3)\n"
