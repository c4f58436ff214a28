"""The code stays in small pieces: no import circle inside ``extract``, ``classify`` or ``bench``
(imports inside functions included), and no function longer than the package's limit (60 lines
in stage 1, 80 in stage 2). Read with ``ast``; nothing is imported."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAX_LINES = {"extract": 60, "classify": 80}


def _modules(package: str) -> dict[str, tuple[ast.Module, bool]]:
    """Dotted name -> (tree, is a package's ``__init__``) for every module under ``package``."""
    out = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        init = parts[-1] == "__init__"
        name = ".".join(parts[:-1] if init else parts)
        out[name] = (ast.parse(path.read_text(encoding="utf-8"), filename=str(path)), init)
    return out


def _known(name: str, modules) -> str | None:
    """The longest module of ``modules`` that ``name`` is or lies in."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def _imported(name: str, tree: ast.Module, init: bool, modules) -> set[str]:
    """The modules of ``modules`` that module ``name`` imports anywhere in its code."""
    here = name if init else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(tree):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = here.split(".")
                package = package[:len(package) - (node.level - 1)]
                base = ".".join(package + ([node.module] if node.module else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                       for a in node.names]
        out.update(m for m in (_known(t, modules) for t in targets) if m)
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
    modules = {"p": None, "p.a": None, "p.b": None, "p.c": None}
    tree = ast.parse("def f():\n    from .b import x\n    from . import c\n    import p.a.z\n")
    assert _imported("p.a", tree, False, modules) == {"p.b", "p.c"}
    assert _imported("p", ast.parse("from .a import f\n"), True, modules) == {"p.a"}


@pytest.mark.parametrize("package", ["extract", "classify", "bench"])
def test_no_import_circle_inside_the_package(package):
    modules = _modules(package)
    graph = {name: _imported(name, tree, init, modules) for name, (tree, init) in modules.items()}
    assert _cycles(graph) == []


@pytest.mark.parametrize("package", sorted(MAX_LINES))
def test_no_function_is_longer_than_the_limit(package):
    long = []
    for name, (tree, _) in _modules(package).items():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
                lines = node.end_lineno - first + 1
                if lines > MAX_LINES[package]:
                    long.append(f"{name}:{node.lineno} {node.name} ({lines} lines)")
    assert long == []


def test_compare_is_a_short_orchestration_of_named_steps():
    tree = ast.parse((ROOT / "classify" / "compare.py").read_text(encoding="utf-8"))
    compare = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "compare")
    body = [n for n in compare.body if not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant))]
    assert body[-1].end_lineno - body[0].lineno + 1 <= 20
    called = {n.func.id for n in ast.walk(compare) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
    assert {"load_and_split", "plan_run", "fit_and_cross_validate", "evaluate", "write_run_json"} <= called
