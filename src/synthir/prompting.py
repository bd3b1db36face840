"""Prompt templates as data files (`prompts/<task>.txt`), versioned by content hash.

A template has a `### system` and a `### user` section; `{field}` placeholders are filled with str.format, so
literal braces in a template are written `{{` `}}`. Few-shot examples become earlier user/assistant turns.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from .errors import ConfigError

_SECTION = re.compile(r"^### (system|user)\s*$", re.MULTILINE)


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
        messages = [{"role": "system", "content": self.system}]
        for example_fields, answer in examples:
            messages += [
                {"role": "user", "content": self._render(example_fields)},
                {"role": "assistant", "content": answer},
            ]
        return [*messages, {"role": "user", "content": self._render(fields)}]

    def _render(self, fields: dict[str, str]) -> str:
        try:
            return self.user.format(**fields)
        except KeyError as error:
            raise ConfigError(f"prompt '{self.name}' needs the field {error}") from None


def parse_template(name: str, text: str) -> Template:
    parts = _SECTION.split(text)
    sections = dict(zip(parts[1::2], (p.strip() for p in parts[2::2]), strict=True))
    if "user" not in sections:
        raise ConfigError(f"prompt '{name}': needs a '### user' section")
    sha = hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]
    return Template(name, sections.get("system", ""), sections["user"], sha)


def load_template(name: str, folder: str | Path | None = None) -> Template:
    """`folder/<name>.txt` when given and present, else the bundled template."""
    if folder is not None and (Path(folder) / f"{name}.txt").is_file():
        return parse_template(name, (Path(folder) / f"{name}.txt").read_text(encoding="utf-8"))
    bundled = resources.files("synthir") / "prompts" / f"{name}.txt"
    if not bundled.is_file():
        raise ConfigError(f"no prompt template '{name}'")
    return parse_template(name, bundled.read_text(encoding="utf-8"))
