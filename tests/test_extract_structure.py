"""Stage 1's code stays in small pieces: no import circle between its modules (imports inside
functions included) and no function longer than 60 lines. Read with ``ast``; nothing imported."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "extract"
MAX_LINES = 60


def _modules() -> dict[str, ast.Module]:
    return {p.stem: ast.parse(p.read_text(encoding="utf-8"), filename=str(p))
            for p in sorted(PACKAGE.glob("*.py"))}


def _imported(name: str, tree: ast.Module, modules: set[str]) -> set[str]:
    """The modules of the package that ``name`` imports anywhere (``__init__`` for the package)."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "extract":
                    out.add(parts[1] if len(parts) > 1 and parts[1] in modules else "__init__")
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0 and not (node.module or "").startswith("extract"):
                continue
            if node.level > 1:
                continue  # above the package
            parts = (node.module or "").split(".")
            if node.level == 0:
                parts = parts[1:]
            if parts and parts[0]:
                out.add(parts[0] if parts[0] in modules else "__init__")
            else:  # from . import a, b: submodules, or names of the package itself
                out.update(a.name if a.name in modules else "__init__" for a in node.names)
    out.discard(name)
    return out


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan)."""
    index, low, stack, on, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_circle_finder_sees_a_circle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    tree = ast.parse("def f():\n    from .b import x\n    from . import c\n")
    assert _imported("a", tree, {"a", "b", "c"}) == {"b", "c"}


def test_no_import_circle_inside_the_package():
    modules = _modules()
    graph = {name: _imported(name, tree, set(modules)) for name, tree in modules.items()}
    assert _cycles(graph) == []


def test_no_function_is_longer_than_60_lines():
    long = []
    for name, tree in _modules().items():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
                lines = node.end_lineno - first + 1
                if lines > MAX_LINES:
                    long.append(f"extract/{name}.py:{node.lineno} {node.name} ({lines} lines)")
    assert long == []
