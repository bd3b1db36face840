"""Each stage's code, derived from the code itself (ast): the first-party modules its script imports, directly or
through other modules (at import time or inside functions, plus modules named as strings for importlib), and the
bundled prompt templates those modules load. `python -m tests.stage_deps` prints what dvc.yaml misses or lists
in excess; `--write` replaces each stage's module deps with exactly the modules it runs."""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"
PACKAGE = "synthir"
_INTERPOLATION = re.compile(r"\$\{([^}]+)\}")
_MODULE_STRING = re.compile(rf"^{PACKAGE}(\.\w+)+$")


def module_path(name: str) -> Path | None:
    """The file of first-party module `name` (a package's __init__.py), or None if there is none."""
    base = SRC.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _package_of(path: Path) -> str:
    name = module_name(path)
    return name if path.name == "__init__.py" else name.rpartition(".")[0]


def _absolute(node: ast.ImportFrom, path: Path) -> str:
    if not node.level:
        return node.module or ""
    package = _package_of(path).split(".")
    base = package[: len(package) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


@cache
def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), str(path))


def imported_modules(path: Path) -> set[str]:
    """First-party modules `path` imports anywhere in its body (a `from x import y` counts x, and x.y where y
    is a submodule), and module names it spells as strings (importlib)."""
    found: set[str] = set()
    for node in ast.walk(_tree(path)):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node, path)
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names if module_path(f"{base}.{alias.name}")}
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and _MODULE_STRING.match(node.value):
            found.add(node.value)
    return {name for name in found if name.split(".")[0] == PACKAGE and module_path(name)}


def _with_parents(name: str) -> set[str]:
    """Importing a.b.c runs a/__init__.py and a/b/__init__.py too."""
    parts = name.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts) + 1)}


def closure(script: Path) -> set[Path]:
    """The script and every first-party module file it can run."""
    seen: set[str] = set()
    pending = [name for found in imported_modules(script) for name in _with_parents(found)]
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        pending += [n for found in imported_modules(module_path(name)) for n in _with_parents(found)]
    return {script} | {module_path(name) for name in seen}


def template_names(path: Path) -> set[str]:
    """Template names passed as literals to `load_template(...)`; a non-literal name is an error, because then
    no one can tell from the code which prompt files a stage formats."""
    names = set()
    for node in ast.walk(_tree(path)):
        if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) == "load_template":
            if not (node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
                raise AssertionError(f"{path}:{node.lineno}: load_template needs a literal template name")
            names.add(node.args[0].value)
    return names


def bundled_template(name: str) -> Path:
    matches = list((SRC / PACKAGE / "prompts").glob(f"*/{name}.txt"))
    assert len(matches) == 1, f"template '{name}': expected one bundled file, found {matches}"
    return matches[0]


def code_of(script: Path) -> set[Path]:
    """Everything of ours a stage script runs or reads: modules and bundled prompt templates."""
    modules = closure(script)
    templates = {bundled_template(name) for module in modules for name in template_names(module)}
    return modules | templates


def _lookup(params: dict, dotted: str) -> object:
    value: object = params
    for part in dotted.split("."):
        value = value[part]  # type: ignore[index]
    return value


def pipeline(dvc_file: Path = REPO / "dvc.yaml", params_file: Path = REPO / "params.yaml") -> dict[str, dict]:
    """dvc.yaml's stages with `${...}` filled in from params.yaml, as DVC does."""
    params = yaml.safe_load(params_file.read_text(encoding="utf-8"))
    text = _INTERPOLATION.sub(lambda m: str(_lookup(params, m.group(1))), dvc_file.read_text(encoding="utf-8"))
    return yaml.safe_load(text)["stages"]


def stage_script(stage: dict) -> Path:
    match = re.search(r"\bstages/\w+\.py\b", stage["cmd"])
    assert match, f"no stages/<name>.py in {stage['cmd']!r}"
    return REPO / match.group(0)


def declared_code(stage: dict) -> set[Path]:
    """The stage's deps that are code or prompts, a folder expanded to its .py/.txt files."""
    files = set()
    for dep in stage.get("deps") or []:
        path = (REPO / dep).resolve()
        if not path.is_relative_to(SRC) and not path.is_relative_to(REPO / "stages"):
            continue
        if path.is_dir():
            files |= {p for p in path.rglob("*") if p.suffix in (".py", ".txt") and "__pycache__" not in p.parts}
        else:
            files.add(path)
    return files


def check(stages: dict[str, dict]) -> dict[str, tuple[set[Path], set[Path]]]:
    """Per stage: (code it runs that dvc.yaml misses, code dvc.yaml lists that it never runs)."""
    report = {}
    for name, stage in stages.items():
        needed, declared = code_of(stage_script(stage)), declared_code(stage)
        report[name] = (needed - declared, declared - needed)
    return report


def rewrite_code_deps(dvc_file: Path = REPO / "dvc.yaml") -> str:
    """dvc.yaml's text with each stage's module deps replaced by exactly the modules its script runs (in the
    place of the first one listed); the script, prompt templates and every other dep stay as written."""
    needed = {
        name: sorted(p for p in closure(stage_script(stage)) if p.suffix == ".py" and p.is_relative_to(SRC))
        for name, stage in pipeline(dvc_file).items()
    }
    out, stage, in_deps, inserted = [], None, False, False
    for line in dvc_file.read_text(encoding="utf-8").splitlines():
        stripped = line.split("#")[0].strip()
        if line.startswith("  ") and not line.startswith("   ") and stripped.endswith(":"):
            stage, in_deps, inserted = stripped[:-1], False, False
        elif line.startswith("    ") and not line.startswith("     ") and stripped.endswith(":"):
            in_deps = stripped == "deps:"
        elif in_deps and stripped.startswith("- src/synthir/") and not stripped.startswith("- src/synthir/prompts"):
            if not inserted:
                indent = line[: len(line) - len(line.lstrip())]
                out += [f"{indent}- {path.relative_to(REPO).as_posix()}" for path in needed[stage]]
                inserted = True
            continue
        out.append(line)
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    import sys

    if sys.argv[1:] == ["--write"]:
        (REPO / "dvc.yaml").write_text(rewrite_code_deps(), encoding="utf-8")
    for stage, (missing, extra) in check(pipeline()).items():
        for label, paths in (("missing", missing), ("not run", extra)):
            for path in sorted(paths):
                print(f"{stage}: {label}: {path.relative_to(REPO)}")
