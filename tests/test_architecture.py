"""The layout rules of the package, checked on its source: imports run one way (no circles, the
library never imports the CLI, plots, the report, the demo or sweeps), no module imports another's private
names, and every CLI module stays thin."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
TOP = ("isthmus.cli", "isthmus.plot", "isthmus.report", "isthmus.demo", "isthmus.experiments")
TOP += ("isthmus.sweep",)  # runs the commands' library calls; checks specs with the flags' types


def _modules() -> dict[str, Path]:
    out = {}
    for f in (SRC / "isthmus").rglob("*.py"):
        name = ".".join(f.relative_to(SRC).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = f
    return out


def _imports(name: str, f: Path, mods: dict[str, Path]) -> list[tuple[str, str]]:
    """(imported module, imported name) for every `from ... import` of isthmus, at any depth."""
    pkg = name if f.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(f.read_text())):
        if not isinstance(node, ast.ImportFrom):
            continue
        if node.level:
            base = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
            target = ".".join(base + ([node.module] if node.module else []))
        else:
            target = node.module or ""
        if target.startswith("isthmus"):
            out += [(target, a.name) for a in node.names]
    return out


def _graph() -> tuple[dict[str, set[str]], list[tuple[str, str, str]]]:
    mods = _modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    private = []
    for m, f in mods.items():
        pkg = m if f.name == "__init__.py" else m.rpartition(".")[0]
        for target, name in _imports(m, f, mods):
            full = f"{target}.{name}"
            graph[m].add(full if full in mods else target)
            if name.startswith("_") and not name.startswith("__") and full not in mods:
                if target != pkg:  # a package's own private helpers are its business
                    private.append((m, target, name))
    return graph, private


def test_no_import_circles():
    graph, _ = _graph()
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(u: str) -> None:
        state[u] = 1
        stack.append(u)
        for v in sorted(graph.get(u, ())):
            if v == u or v not in graph:
                continue
            if state.get(v) == 1:
                cycles.append(stack[stack.index(v) :] + [v])
            elif v not in state:
                visit(v)
        stack.pop()
        state[u] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    assert cycles == []


def test_no_module_imports_another_modules_private_names():
    _, private = _graph()
    assert private == []


def test_the_library_never_imports_the_top_floor():
    graph, _ = _graph()
    for m, deps in graph.items():
        if m == "isthmus" or m.startswith(TOP):
            continue
        up = [d for d in deps if d.startswith(TOP)]
        assert up == [], f"{m} imports {up}"


def test_cli_modules_are_thin():
    for f in (SRC / "isthmus" / "cli").glob("*.py"):
        assert len(f.read_text().splitlines()) <= 150, f.name
