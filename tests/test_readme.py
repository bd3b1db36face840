"""The README's experiment commands are valid params: every `-S key=value` of a `dvc exp run` line, with the
others on its line, passes the same validation as params.yaml; and the docs do not go stale: the pipeline table
against dvc.yaml, the loss lists against the schema, docs/design.md's layout against the library's modules."""

import re
import shlex

import pytest
from ruamel.yaml import YAML

from synthir.config import parse_params
from synthir.models import check_reference
from synthir.yamlfile import read_yaml
from tests.conftest import REPO

_BLOCK = re.compile(r"```bash\n(.*?)```", re.DOTALL)
_LOOP = re.compile(r"^for (\w+) in ([^;]+); do (.*); done$")


def _commands(text: str) -> list[str]:
    """Every `dvc exp run` command of the README's bash blocks, continuation lines joined, loops unrolled."""
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


README = (REPO / "README.md").read_text(encoding="utf-8")
COMMANDS = _commands(README)


def test_the_readme_has_experiment_commands():
    assert len(COMMANDS) >= 10 and sum(bool(_overrides(c)) for c in COMMANDS) >= 8


@pytest.mark.parametrize("command", [c for c in COMMANDS if _overrides(c)])
def test_every_set_param_in_the_readme_is_valid(command, tmp_path, monkeypatch):
    """Applied as `dvc exp run` applies them (DVC's Hydra overrides: `~key` deletes, `+key` adds)."""
    from dvc.utils.hydra import apply_overrides

    monkeypatch.chdir(REPO)  # relative paths in params (prompts_dir) are relative to the project
    params = tmp_path / "params.yaml"
    params.write_bytes((REPO / "params.yaml").read_bytes())
    overrides = [args for i, args in enumerate(shlex.split(command)) if i and shlex.split(command)[i - 1] == "-S"]
    for n, override in enumerate(overrides):
        key, _, value = override.partition("=")
        if key == "dataset.path":  # the README makes this folder first
            (tmp_path / value).mkdir()
            overrides[n] = f"{key}={tmp_path / value}"
    apply_overrides(params, overrides)
    parse_params(read_yaml(params), f"README: {command}", check_model=check_reference)


def _section(text: str, heading: str) -> str:
    return text.split(f"\n{heading}\n", 1)[1].split("\n## ", 1)[0]


def test_the_pipeline_table_lists_every_stage_of_dvc_yaml_in_order():
    rows = re.findall(r"^\| (\w+) \|", _section(README, "## Pipeline"), re.MULTILINE)
    stages = list(YAML(typ="safe", pure=True).load((REPO / "dvc.yaml").read_text(encoding="utf-8"))["stages"])
    assert [row for row in rows if row != "stage"] == stages


@pytest.mark.parametrize("key", ["train.loss", "align.loss"])
def test_the_losses_the_readme_names_are_those_the_schema_allows(key):
    from typing import get_args

    from synthir.config import AlignParams, TrainParams

    (named,) = re.findall(rf"`{re.escape(key)}` takes ([^;.]+)", _section(README, "## Training"))
    block = TrainParams if key == "train.loss" else AlignParams
    assert re.findall(r"`(\w+)`", named) == list(get_args(block.model_fields["loss"].annotation))


def test_the_design_layout_names_every_library_module():
    """docs/design.md's layout is where a newcomer learns what each module does: a new module is named there."""
    layout = (REPO / "docs" / "design.md").read_text(encoding="utf-8").split("## 2.", 1)[0]
    library = REPO / "src" / "synthir"
    modules = [p for p in library.rglob("*.py") if p.name != "__init__.py"]
    assert [str(p.relative_to(library)) for p in modules if p.name not in layout] == []
