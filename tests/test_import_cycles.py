"""No import cycle among fewclip's modules: every ``import`` of a fewclip module, at module top or inside a function
(or under ``if TYPE_CHECKING``), is an edge, and the graph they make is acyclic. A function-level import that hides
a cycle is still a cycle: two modules that need each other share a piece that belongs in a module below both."""

from __future__ import annotations

import ast
from pathlib import Path

import fewclip

PACKAGE = Path(fewclip.__file__).parent


def module_files() -> dict[str, Path]:
    """fewclip's modules by dotted name (a package by its name, from its ``__init__``)."""
    modules = {}
    for file in PACKAGE.rglob("*.py"):
        parts = ["fewclip", *file.relative_to(PACKAGE).with_suffix("").parts]
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = file
    return modules


def imported_names(tree: ast.AST, module: str, is_package: bool) -> list[str]:
    """Every dotted name an import statement anywhere in ``tree`` reaches (``from a import b`` reaches ``a.b``)."""
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the module's own package upwards
                anchor = module.split(".")[: len(module.split(".")) - node.level + is_package]
                base = ".".join(anchor + ([base] if base else []))
            names += [f"{base}.{alias.name}" for alias in node.names]
    return names


def import_graph() -> dict[str, set[str]]:
    """Module -> the fewclip modules it imports (a name resolves to its longest module prefix)."""
    files = module_files()

    def owner(name: str) -> str | None:
        while name and name not in files:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for module, file in files.items():
        tree = ast.parse(file.read_text(encoding="utf-8"), str(file))
        targets = {owner(name) for name in imported_names(tree, module, file.name == "__init__.py")}
        graph[module] = {t for t in targets if t is not None and t != module}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as [a, b, ..., a], or None (depth-first search, colouring the modules on the current path)."""
    state: dict[str, str] = {}
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = "on path"
        path.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == "on path":
                return path[path.index(target) :] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        state[module] = "done"
        path.pop()
        return None

    for module in sorted(graph):
        if module not in state and (cycle := visit(module)):
            return cycle
    return None


def test_the_graph_sees_every_kind_of_import() -> None:
    graph = import_graph()
    assert "fewclip.heads.base" in graph["fewclip.heads.registry"]  # module top, from-import of a name
    assert "fewclip.heads.on_features.linear_probe" in graph["fewclip.heads"]  # a package's __init__
    assert len(graph) == len(module_files()) > 100
    nested = ast.parse(
        "def f():\n    from fewclip.report.html import esc\nif TYPE_CHECKING:\n    import fewclip.report.compare\n"
    )
    assert imported_names(nested, "fewclip.x", False) == ["fewclip.report.html.esc", "fewclip.report.compare"]
    relative = ast.parse("from . import base\nfrom .registry import HEADS\n")
    assert imported_names(relative, "fewclip.heads", True) == ["fewclip.heads.base", "fewclip.heads.registry.HEADS"]


def test_find_cycle_finds_one() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_no_import_cycle_among_fewclip_modules() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


LIBRARY = (
    "backbones",
    "data",
    "features",
    "heads",
    "training",
    "metrics",
    "stats",
    "saliency",
    "fileio",
    "registry",
    "configbase",
    "threads",
    "interrupt",
    "distributed",
    "world",
    "version",
    "caption",
)
ON_TOP = ("fewclip.runner", "fewclip.report")


def test_the_library_imports_no_runner_or_report() -> None:
    """Imports run one way, library <- runner <- report (STYLE.md): a notebook user imports the library alone."""
    graph = import_graph()
    library = [m for m in graph if m.split(".")[1:2] and m.split(".")[1] in LIBRARY]
    assert "fewclip.heads.base" in library and "fewclip.data.prepare" in library
    upward = {m: sorted(t for t in graph[m] if t.startswith(ON_TOP)) for m in library}
    assert not {m: t for m, t in upward.items() if t}, upward


def test_the_layering_check_sees_an_upward_import() -> None:
    graph = import_graph()
    assert any(t.startswith("fewclip.runner") for t in graph["fewclip.report.html"])  # report sits on the runner
