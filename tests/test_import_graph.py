"""The library's shape: phases in layers, imports pointing down, no cycle, private names kept private, empty
package __init__ files, and docs/design.md's picture of it current."""

from tests.import_graph import (
    LAYERS,
    cycles,
    imports,
    layer_of,
    nonempty_inits,
    picture,
    private_imports,
    upward_imports,
)
from tests.stage_deps import REPO


def test_the_import_graph_has_no_cycle():
    assert cycles(imports()) == []


def test_no_module_imports_from_a_higher_layer():
    assert upward_imports(imports()) == []


def test_no_private_name_is_imported_across_modules():
    assert private_imports() == []


def test_package_init_files_are_empty():
    """An __init__ runs whenever anything of its package is imported, so it would enter every closure."""
    assert nonempty_inits() == []


def test_the_checks_can_fail():
    graph = {"synthir.errors": {"synthir.results.report"}, "synthir.results.report": {"synthir.errors"}}
    assert cycles(graph) == [["synthir.errors", "synthir.results.report"]]
    assert upward_imports(graph) == ["synthir.errors (foundation) imports synthir.results.report (results)"]
    assert layer_of("synthir.llm.base") == [name for name, _ in LAYERS].index("sources")
    assert layer_of("synthir.cli") == len(LAYERS) - 1


def test_the_design_page_shows_the_current_graph():
    design = (REPO / "docs" / "design.md").read_text(encoding="utf-8")
    assert picture() in design, "paste `python -m tests.import_graph` into docs/design.md's import graph"
