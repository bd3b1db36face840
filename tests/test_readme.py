"""The docs' experiment commands are valid params: every `-S key=value` of a `dvc exp run` line in README.md or a
docs/*.md page, with the others on its line, passes the same validation as params.yaml; and the docs do not go
stale: docs/pipeline.md's stage table against dvc.yaml, docs/training.md's loss lists against the schema,
docs/design.md's layout against the library's modules, every relative link against the files it names, and the
README stays a short first page."""

import os
import re
import shlex
import subprocess
import sys

import pytest
from ruamel.yaml import YAML

from synthir.config import parse_params
from synthir.models import check_reference
from synthir.yamlfile import read_yaml
from tests.conftest import REPO

_BLOCK = re.compile(r"```bash\n(.*?)```", re.DOTALL)
_LOOP = re.compile(r"^for (\w+) in ([^;]+); do (.*); done$")
_FENCE = re.compile(r"^\s*```.*?^\s*```", re.DOTALL | re.MULTILINE)
_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _commands(text: str) -> list[str]:
    """Every `dvc exp run` command of a page's bash blocks, continuation lines joined, loops unrolled."""
    commands = []
    for block in _BLOCK.findall(text):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #")[0].strip()
            loop = _LOOP.match(line)
            unrolled = (
                [loop.group(3).replace(f"${loop.group(1)}", v) for v in loop.group(2).split()] if loop else [line]
            )
            commands += [c for c in unrolled if c.startswith("dvc exp run")]
    return commands


def _set(params: dict, dotted: str, value: object) -> None:
    *parents, last = dotted.split(".")
    for part in parents:
        params = params.setdefault(part, {})
    params[last] = value


def _overrides(command: str) -> list[tuple[str, object]]:
    args = shlex.split(command)
    pairs = [args[i + 1].partition("=") for i, arg in enumerate(args) if arg == "-S"]
    return [(key, YAML(typ="safe", pure=True).load(value)) for key, _, value in pairs]  # DVC parses values as YAML


PAGES = {path: path.read_text(encoding="utf-8") for path in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]}
COMMANDS = [command for text in PAGES.values() for command in _commands(text)]


def test_the_docs_have_experiment_commands():
    assert len(COMMANDS) >= 10 and sum(bool(_overrides(c)) for c in COMMANDS) >= 8


@pytest.mark.parametrize("command", [c for c in COMMANDS if _overrides(c)])
def test_every_set_param_in_the_docs_is_valid(command, tmp_path, monkeypatch):
    """Applied as `dvc exp run` applies them (DVC's Hydra overrides: `~key` deletes, `+key` adds)."""
    from dvc.utils.hydra import apply_overrides

    monkeypatch.chdir(REPO)  # relative paths in params (prompts_dir) are relative to the project
    params = tmp_path / "params.yaml"
    params.write_bytes((REPO / "params.yaml").read_bytes())
    overrides = [args for i, args in enumerate(shlex.split(command)) if i and shlex.split(command)[i - 1] == "-S"]
    for n, override in enumerate(overrides):
        key, _, value = override.partition("=")
        if key == "dataset.path":  # the README's own-corpus recipe makes this folder first
            (tmp_path / value).mkdir()
            overrides[n] = f"{key}={tmp_path / value}"
    apply_overrides(params, overrides)
    parse_params(read_yaml(params), f"docs: {command}", check_model=check_reference)


def _section(page: str, heading: str) -> str:
    return PAGES[REPO / page].split(f"\n{heading}\n", 1)[1].split("\n## ", 1)[0]


def test_the_pipeline_table_lists_every_stage_of_dvc_yaml_in_order():
    rows = re.findall(r"^\| (\w+) \|", _section("docs/pipeline.md", "## Stages"), re.MULTILINE)
    stages = list(YAML(typ="safe", pure=True).load((REPO / "dvc.yaml").read_text(encoding="utf-8"))["stages"])
    assert [row for row in rows if row != "stage"] == stages


@pytest.mark.parametrize("key", ["train.loss", "align.loss"])
def test_the_losses_the_readme_names_are_those_the_schema_allows(key):
    from typing import get_args

    from synthir.config import AlignParams, TrainParams

    (named,) = re.findall(rf"`{re.escape(key)}` takes ([^;.]+)", _section("docs/training.md", "## Losses"))
    block = TrainParams if key == "train.loss" else AlignParams
    assert re.findall(r"`(\w+)`", named) == list(get_args(block.model_fields["loss"].annotation))


def test_the_design_layout_names_every_library_module():
    """docs/design.md's layout is where a newcomer learns what each module does: a new module is named there."""
    layout = (REPO / "docs" / "design.md").read_text(encoding="utf-8").split("## 2.", 1)[0]
    library = REPO / "src" / "synthir"
    modules = [p for p in library.rglob("*.py") if p.name != "__init__.py"]
    assert [str(p.relative_to(library)) for p in modules if p.name not in layout] == []


def _anchors(text: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces as hyphens, repeats numbered."""
    anchors: set[str] = set()
    for heading in re.findall(r"^#+ (.+)$", _FENCE.sub("", text), re.MULTILINE):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        n = next(n for n in range(len(anchors) + 1) if (f"{slug}-{n}" if n else slug) not in anchors)
        anchors.add(f"{slug}-{n}" if n else slug)
    return anchors


def _relative_links(text: str) -> list[str]:
    prose = re.sub(r"`[^`\n]*`", "", _FENCE.sub("", text))
    return [link for link in _LINK.findall(prose) if not re.match(r"^[a-z]+:", link)]


@pytest.mark.parametrize("page", list(PAGES), ids=lambda path: str(path.relative_to(REPO)))
def test_every_relative_link_of_the_docs_points_at_an_existing_file_and_heading(page):
    links = _relative_links(PAGES[page])
    broken = []
    for link in links:
        path, _, anchor = link.partition("#")
        target = (page.parent / path).resolve() if path else page
        if not target.exists() or (
            anchor and target.suffix == ".md" and anchor not in _anchors(target.read_text(encoding="utf-8"))
        ):
            broken.append(link)
    assert broken == []
    assert page.name != "README.md" or len(links) >= 10  # the README links to the docs pages


def test_the_anchors_follow_githubs_rules():
    text = "# A\n## Results: chosen on dev, scored on test\n## LLM-backbone students (DRAMA)\n```\n# no\n```\n## A\n"
    assert _anchors(text) == {"a", "results-chosen-on-dev-scored-on-test", "llm-backbone-students-drama", "a-1"}


def test_the_readme_is_a_short_first_page():
    """The README is what a user reads first: what it is, results, the two commands; the rest lives in docs/."""
    assert len(PAGES[REPO / "README.md"].splitlines()) <= 150
    assert all(page in PAGES[REPO / "README.md"] for page in ("docs/design.md", "docs/study.md", "docs/pipeline.md"))


def test_the_docs_site_builds_without_a_warning(tmp_path):
    """`mkdocs build --strict` (requirements-docs.txt, optional): every page, link and anchor resolves on the site."""
    pytest.importorskip("mkdocs")
    pytest.importorskip("material")
    build = [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")]
    result = subprocess.run(
        build, cwd=REPO, capture_output=True, text=True, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "site" / "index.html").exists() and (tmp_path / "site" / "study" / "index.html").exists()
