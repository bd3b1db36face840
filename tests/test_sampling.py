import pytest

from synthir.sampling import sample_ids

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
