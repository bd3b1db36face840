import shutil

import pytest

from synthir.errors import ConfigError
from synthir.prompting import (
    TEMPLATE_FIELDS,
    bundled_template_path,
    check_prompts_dir,
    load_template,
    parse_template,
    truncate_words,
)
from tests.conftest import REPO

BUNDLED = REPO / "src" / "synthir" / "prompts"


def test_every_bundled_template_loads_and_fills_its_fields():
    for name, fields in TEMPLATE_FIELDS.items():
        template = load_template(name)
        messages = template.messages(**{field: f"<{field}>" for field in fields})
        required = fields - {"domain"}  # how generated passages should read: a template may leave it out
        assert all(f"<{field}>" in messages[-1]["content"] for field in required), name
        assert not any("{" in m["content"] for m in messages), name
        assert bundled_template_path(name).parent.name in ("generate", "judge")


def test_the_domain_fills_the_system_prompt_and_scifact_renders_as_before():
    """generate.domain replaces the hard-coded "scientific abstract"; SciFact's value renders the old text, so the
    committed completions stay cache hits."""
    template = load_template("query_negative")
    system = template.messages(query="q", domain="a scientific abstract")[0]["content"]
    assert "(3 to 5 sentences, in the style of a scientific abstract)" in system
    assert "forum answer" in template.messages(query="q", domain="a forum answer")[0]["content"]


@pytest.mark.parametrize(
    ("user", "message"),
    [
        ("Passage:\n{0}", r"doc2query.txt:5: \{0\} is a positional placeholder; 'doc2query' fills in \{passage\}"),
        ("Passage:\n{}", r"doc2query.txt:5: \{\} is a positional placeholder"),
        ("Passage:\n{passage}\n{query}", r"doc2query.txt:6: \{query\} is an unknown placeholder"),
        ("Passage:\n{passage.upper}", r"\{passage.upper\} is an unknown placeholder"),
        ("Passage: {passage", r"doc2query.txt: expected '\}' before end of string \(write literal braces as"),
        ("Passage: {passage} }", r"doc2query.txt: Single '\}' encountered"),
        ("Passage: {passage:d}", r"doc2query.txt: the user section does not render: Unknown format code 'd'"),
        ("Passage: {passage!x}", r"doc2query.txt: the user section does not render: Unknown conversion specifier x"),
        ("Passage: {passage:{0}}", r"doc2query.txt: the user section does not render"),
    ],
)
def test_bad_placeholders_name_the_file_and_line(tmp_path, user, message):
    (tmp_path / "doc2query.txt").write_text(f"### system\nWrite a query.\n### user\n{user}\n")
    with pytest.raises(ConfigError, match=message):
        load_template("doc2query", tmp_path)


def test_literal_braces_are_kept():
    template = parse_template("doc2query", '### user\nAnswer as JSON {{"q": ...}}: {passage}\n')
    assert template.messages(passage="p")[-1]["content"] == 'Answer as JSON {"q": ...}: p'


def test_an_override_folder_must_hold_the_template(tmp_path):
    with pytest.raises(ConfigError, match=r"query_negative.txt: not found; a prompts folder must hold every"):
        load_template("query_negative", tmp_path)


def test_a_misspelt_template_file_is_an_error_not_ignored(tmp_path):
    shutil.copytree(BUNDLED / "generate", tmp_path / "prompts")
    check_prompts_dir(tmp_path / "prompts", "generate.prompts_dir")
    (tmp_path / "prompts" / "doc2querry.txt").write_text("### user\n{passage}\n")
    with pytest.raises(ConfigError, match=r"doc2querry.txt: not a template synthir uses \(known: doc2query,"):
        check_prompts_dir(tmp_path / "prompts", "generate.prompts_dir")
    with pytest.raises(ConfigError, match=r"generate.prompts_dir: '.*nowhere' is not a folder"):
        check_prompts_dir(tmp_path / "nowhere", "generate.prompts_dir")


def test_an_edited_override_changes_the_version():
    bundled = load_template("doc2query")
    edited = parse_template("doc2query", bundled_template_path("doc2query").read_text() + "\nBe brief.\n")
    assert edited.version != bundled.version and edited.version.startswith("doc2query@")


def test_truncate_words():
    assert truncate_words("a b c", 3) == "a b c"
    assert truncate_words("a b c d", 2) == "a b ..."
