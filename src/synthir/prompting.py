"""Prompt templates as data files, versioned by content hash.

The bundled templates live in `prompts/generate/` (what the generate stage formats; `generate.prompts_dir`
replaces that folder) and `prompts/judge/` (the LLM judge's questions). A template has a `### system` and a
`### user` section; `{field}` placeholders are filled with str.format in both, so literal braces are written
`{{` `}}`. Few-shot examples become earlier user/assistant turns. Every template is checked when loaded:
unknown placeholders, positional ones (`{0}`) and unbalanced braces are errors naming the file and line.
"""

from __future__ import annotations

import hashlib
import re
import string
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from .errors import ConfigError

TEMPLATE_FIELDS: dict[str, frozenset[str]] = {
    "doc2query": frozenset({"passage"}),
    "query_negative": frozenset({"query", "domain"}),
    "syntriever_cot": frozenset({"query", "domain"}),
    "syntriever_positive": frozenset({"query", "domain"}),
    "syntriever_negative": frozenset({"query", "domain"}),
    "syntriever_cot_concise": frozenset({"query", "domain"}),
    "syntriever_positive_concise": frozenset({"query", "domain"}),
    "syntriever_negative_concise": frozenset({"query", "domain"}),
    "verify_relevance": frozenset({"query", "passage"}),
    "relabel_relevant": frozenset({"query", "passage"}),
    "prefer_passage": frozenset({"query", "passage_a", "passage_b"}),
    "prefer_forced_choice": frozenset({"query", "passage_1", "passage_2"}),
}
"""Every template synthir formats, and the fields it fills in."""

BUNDLED_DIRS = ("generate", "judge")
_SECTION = re.compile(r"^### (system|user)\s*$", re.MULTILINE)


def truncate_words(text: str, limit: int) -> str:
    """The first `limit` words of a passage (with an ellipsis when cut), to keep prompts within the context."""
    tokens = text.split()
    return text if len(tokens) <= limit else " ".join(tokens[:limit]) + " ..."


@dataclass(frozen=True)
class Template:
    name: str
    system: str
    user: str
    sha: str

    @property
    def version(self) -> str:
        """`name@hash`: what provenance records, so a changed prompt is visible in every output."""
        return f"{self.name}@{self.sha}"

    def messages(self, examples: list[tuple[dict[str, str], str]] = (), **fields: str) -> list[dict[str, str]]:
        """Chat messages: system, then (user, assistant) per few-shot example, then the user turn."""
        messages = [{"role": "system", "content": self.system.format(**fields)}]
        for example_fields, answer in examples:
            messages += [
                {"role": "user", "content": self.user.format(**example_fields)},
                {"role": "assistant", "content": answer},
            ]
        return [*messages, {"role": "user", "content": self.user.format(**fields)}]


def _line_of(text: str, needle: str) -> int:
    return text[: max(text.find(needle), 0)].count("\n") + 1


def _check_fields(name: str, text: str, section: str, source: str) -> None:
    """Every placeholder of a section must be one of the fields this template gets."""
    allowed = TEMPLATE_FIELDS[name]
    try:
        parsed = list(string.Formatter().parse(section))
    except ValueError as error:
        raise ConfigError(f"{source}: {error} (write literal braces as {{{{ and }}}})") from None
    for _, field, _, _ in parsed:
        if field is None:
            continue
        if field not in allowed:
            where = f"{source}:{_line_of(text, '{' + field)}"
            kind = "a positional placeholder" if field == "" or field.isdigit() else "an unknown placeholder"
            raise ConfigError(
                f"{where}: {{{field}}} is {kind}; '{name}' fills in {', '.join('{' + f + '}' for f in sorted(allowed))}"
            )


def parse_template(name: str, text: str, source: str | None = None) -> Template:
    source = source or f"prompt '{name}'"
    if name not in TEMPLATE_FIELDS:
        raise ConfigError(f"{source}: '{name}' is not a template synthir uses (known: {', '.join(TEMPLATE_FIELDS)})")
    parts = _SECTION.split(text)
    sections = dict(zip(parts[1::2], (p.strip() for p in parts[2::2]), strict=True))
    if "user" not in sections:
        raise ConfigError(f"{source}: needs a '### user' section")
    for section in ("system", "user"):
        _check_fields(name, text, sections.get(section, ""), source)
        try:  # format specs and conversions ({passage:d}, {passage!x}) fail only when rendered: render once now
            sections.get(section, "").format(**dict.fromkeys(TEMPLATE_FIELDS[name], "text"))
        except (ValueError, IndexError, KeyError) as error:
            raise ConfigError(f"{source}: the {section} section does not render: {error}") from None
    sha = hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]
    return Template(name, sections.get("system", ""), sections["user"], sha)


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})") from None


def bundled_template_path(name: str) -> Path:
    """The file a bundled template is read from (`prompts/<group>/<name>.txt`)."""
    for group in BUNDLED_DIRS:
        path = Path(str(resources.files("synthir") / "prompts" / group / f"{name}.txt"))
        if path.is_file():
            return path
    raise ConfigError(f"no bundled prompt template '{name}'")


def load_template(name: str, folder: str | Path | None = None) -> Template:
    """`folder/<name>.txt` when a folder is given (it must hold the template), else the bundled template."""
    path = Path(folder) / f"{name}.txt" if folder is not None else bundled_template_path(name)
    if not path.is_file():
        raise ConfigError(f"{path}: not found; a prompts folder must hold every template its stage formats")
    return parse_template(name, _read(path), str(path))


def check_prompts_dir(folder: str | Path, key: str) -> None:
    """A prompts folder holds only templates synthir knows: a misspelt file name is an error, not ignored."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"{key}: '{folder}' is not a folder")
    for path in sorted(folder.glob("*.txt")):
        if path.stem not in TEMPLATE_FIELDS:
            raise ConfigError(f"{path}: not a template synthir uses (known: {', '.join(TEMPLATE_FIELDS)})")
