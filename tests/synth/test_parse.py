import pytest

from synthir.synth.parse import clean_passage, clean_query, dedup, is_echo

PASSAGE = "Cats purr when they are content. Purring is produced by the larynx and diaphragm."


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("What makes cats purr?", "What makes cats purr?"),
        ('**Query:** "What makes cats purr?"', "What makes cats purr?"),
        (
            "<think>the passage is about cats</think>\nQuestion 1: which muscles make cats purr",
            "which muscles make cats purr",
        ),
        ("\n\n1. Search query: 'purring mechanism in cats'\n2. another", "purring mechanism in cats"),
        ("", None),
        ("I'm sorry, I can't help with that.", None),
        ("cats", None),  # too short
        ("Cats purr when they are content. Purring is produced by the larynx", None),  # echo of the passage
        ("<think>unfinished reasoning about purring", None),
        ("What is the name of the protein described in the passage?", None),  # not stand-alone
    ],
)
def test_clean_query(raw, expected):
    assert clean_query(raw, PASSAGE) == expected


def test_clean_passage_joins_lines_and_rejects_short_or_echo():
    raw = (
        "Passage:\nDogs bark to warn their owners.\nBarking frequency rises with arousal and unfamiliar sounds nearby."
    )
    assert clean_passage(raw, "why do cats purr") == (
        "Dogs bark to warn their owners. Barking frequency rises with arousal and unfamiliar sounds nearby."
    )
    assert clean_passage("Too short to be a passage.", "q") is None
    assert clean_passage("why do cats purr " * 4, "why do cats purr " * 4) is None


def test_clean_passage_drops_a_sentence_cut_by_the_token_limit():
    raw = "Bees collect nectar from many flowers. Enzymes in the hive turn it into honey over weeks. Later the"
    assert clean_passage(raw, "q", min_words=5) == (
        "Bees collect nectar from many flowers. Enzymes in the hive turn it into honey over weeks."
    )


def test_is_echo_and_dedup():
    assert is_echo("Cats purr when they are content. Purring is", PASSAGE)
    assert not is_echo("why do cats purr", PASSAGE)
    assert dedup(["why do cats purr", "Why do cats purr?", "how do bees fly", "why cats purr do"], 0.8) == [
        "why do cats purr",
        "how do bees fly",
    ]
