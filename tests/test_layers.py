"""The packages import each other in one direction only, and no modules import each other
in a circle: read from the source with ``ast``, lazy and type-checking imports included
(they are dependencies all the same)."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

from tests.harness import ROOT

# Each package and the packages it may import. ``gpuworker`` and ``frontend`` share only
# what lies below them (the wire contract lives in ``broker``); ``commands`` is the top floor.
MAY_IMPORT = {
    "config": set(),
    "accounts": {"config"},
    "broker": {"config"},
    "gpuworker": {"config", "broker"},
    "frontend": {"config", "accounts", "broker"},
    "commands": {"config", "accounts", "broker", "gpuworker", "frontend"},
}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_names(path: Path, module: str) -> set[str]:
    """Every dotted name ``path`` imports, relative imports resolved; for ``from a import b``
    both ``a`` and ``a.b`` (``b`` may be a module or a name in ``a``)."""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join([*package[: len(package) - node.level + 1], *filter(None, [node.module])])
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def import_graph() -> dict[str, set[str]]:
    """Module -> the modules of this project it imports."""
    files = {module_name(path): path for package in MAY_IMPORT for path in (ROOT / package).rglob("*.py")}
    graph: dict[str, set[str]] = defaultdict(set)
    for module, path in files.items():
        for name in imported_names(path, module):
            while name and name not in files:
                name = name.rpartition(".")[0]
            if name and name != module:
                graph[module].add(name)
    return {module: graph[module] for module in files}


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    order: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(module: str) -> None:
        order[module] = low[module] = len(order)
        stack.append(module)
        for imported in graph[module]:
            if imported not in order:
                visit(imported)
                low[module] = min(low[module], low[imported])
            elif imported in stack:
                low[module] = min(low[module], order[imported])
        if low[module] == order[module]:
            component = stack[stack.index(module) :]
            del stack[stack.index(module) :]
            if len(component) > 1:
                found.append(sorted(component))

    for module in graph:
        if module not in order:
            visit(module)
    return found


def upward(graph: dict[str, set[str]]) -> list[str]:
    """The imports of ``graph`` from a package into one it may not import."""
    return sorted(
        f"{module} -> {imported}"
        for module, imports in graph.items()
        for imported in imports
        if (top := imported.split(".")[0]) != module.split(".")[0] and top not in MAY_IMPORT[module.split(".")[0]]
    )


def test_every_package_imports_only_the_layers_below_it():
    assert upward(import_graph()) == []


def test_no_modules_import_each_other_in_a_circle():
    assert circles(import_graph()) == []


def test_the_guards_see_an_upward_import_and_a_circle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert circles(graph) == [["a", "b", "c"]]
    assert upward({"config.a": {"frontend.b", "config.c"}, "frontend.b": {"config.a"}}) == ["config.a -> frontend.b"]
    names = imported_names(ROOT / "frontend" / "app.py", "frontend.app")
    assert "frontend.handlers.metrics.MetricsHandler" in names and "config.settings" in names
