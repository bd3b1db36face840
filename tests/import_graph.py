"""The library's import graph, from the code (ast): which module imports which, the layers they sit in, and a
picture of it. `python -m tests.import_graph` prints the picture (a Mermaid flowchart of the packages) that
docs/design.md shows; tests/test_import_graph.py keeps the graph acyclic, every import pointing down or sideways
within its layer, and the picture current."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

from tests.stage_deps import PACKAGE, SRC, imported_modules, module_name

LAYERS: list[tuple[str, set[str]]] = [
    ("foundation", set()),  # every top-level module not named below
    ("settings", {"config", "stage", "presets"}),
    ("sources", {"data", "llm", "retrieval"}),
    ("synth", {"synth"}),
    ("triples", {"triples"}),
    ("training", {"training"}),
    ("align", {"align"}),
    ("evaluation", {"evaluation"}),
    ("results", {"results"}),
    ("cli", {"cli"}),
]
"""Lowest first. A module may import from its own layer or a lower one; within a layer, from any module, as long
as no cycle forms. A package (data/, llm/, ...) is its own room; the top level holds what every phase uses."""


def library_files() -> list[Path]:
    return sorted((SRC / PACKAGE).rglob("*.py"))


def unit(module: str) -> str:
    """The package of a module inside a subpackage (`synthir.llm.base` → `llm`), else the module's own name."""
    parts = module.split(".")
    return parts[1] if len(parts) > 2 else PACKAGE


def layer_of(module: str) -> int:
    name = unit(module) if unit(module) != PACKAGE else module.split(".")[-1]
    for index, (_, members) in enumerate(LAYERS):
        if name in members:
            return index
    return 0


def imports() -> dict[str, set[str]]:
    """Each library module → the library modules it imports (packages' __init__ files left out: they are empty)."""
    graph = {}
    for path in library_files():
        if path.name == "__init__.py":
            continue
        found = {name for name in imported_modules(path) if not (SRC / Path(*name.split("."))).is_dir()}
        graph[module_name(path)] = found - {module_name(path)}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    return sorted(
        f"{source} ({LAYERS[layer_of(source)][0]}) imports {target} ({LAYERS[layer_of(target)][0]})"
        for source, targets in graph.items()
        for target in targets
        if layer_of(target) > layer_of(source)
    )


def private_imports() -> list[str]:
    """`from x import _name` across modules: a private name is one module's business."""
    found = []
    for path in library_files():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                for alias in node.names:
                    if alias.name.startswith("_") and not alias.name.startswith("__"):
                        found.append(f"{path.relative_to(SRC)}:{node.lineno}: {alias.name}")
    return found


def nonempty_inits() -> list[str]:
    """Package __init__ files holding more than a docstring: they would run (and enter stage closures) on import."""
    found = []
    for path in library_files():
        if path.name == "__init__.py" and path.parent != SRC / PACKAGE:  # the package's own holds its version
            body = ast.parse(path.read_text(encoding="utf-8")).body
            if any(not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant)) for n in body):
                found.append(str(path.relative_to(SRC)))
    return found


def node(module: str) -> str:
    """A node of the picture: a package (`llm/`), a top-level module above the foundation (`config`), or the
    foundation as one node."""
    name = unit(module)
    if name != PACKAGE:
        return f"{name}/"
    return "foundation" if layer_of(module) == 0 else module.split(".")[-1]


def mermaid(graph: dict[str, set[str]]) -> str:
    """The nodes as a flowchart, one box per layer, lowest at the bottom; an arrow is "imports"."""
    ids = {node(module): node(module).rstrip("/") for module in graph}
    edges = sorted({(node(s), node(t)) for s, targets in graph.items() for t in targets if node(s) != node(t)})
    groups: dict[int, set[str]] = defaultdict(set)
    for module in graph:
        groups[layer_of(module)].add(node(module))
    lines = ["flowchart BT"]
    for index in sorted(groups):
        if len(groups[index]) == 1:
            (label,) = groups[index]
            lines.append(f'  {ids[label]}["{label}"]')
            continue
        lines.append(f"  subgraph layer_{LAYERS[index][0]} [{LAYERS[index][0]}]")
        lines += [f'    {ids[label]}["{label}"]' for label in sorted(groups[index])]
        lines.append("  end")
    lines += [f"  {ids[source]} --> {ids[target]}" for source, target in edges]
    return "\n".join(lines) + "\n"


def picture() -> str:
    """The Mermaid block docs/design.md shows, and the modules the foundation node stands for."""
    graph = imports()
    foundation = sorted(m.split(".")[-1] for m in graph if unit(m) == PACKAGE and layer_of(m) == 0)
    return f"```mermaid\n{mermaid(graph)}```\n\n`foundation`: {', '.join(foundation)}.\n"


if __name__ == "__main__":
    print(picture(), end="")
