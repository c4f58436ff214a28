"""The code's shape: the benchmark modules import each other without a circle, and compare is a
short orchestration of named steps."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from conftest import ROOT


def _imports(package: str) -> dict[str, set[str]]:
    """{module: the modules of ``package`` it imports, at any depth of its code}."""
    folder = ROOT / package
    names = {p.stem for p in folder.glob("*.py")} | {p.name for p in folder.iterdir() if (p / "__init__.py").is_file()}
    graph = {}
    for path in folder.glob("*.py"):
        found = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                mod = node.module or ""
                if node.level == 1 or mod.startswith(f"{package}."):
                    head = mod.split(".")[-1] if mod.startswith(f"{package}.") else mod.split(".")[0]
                    if head:
                        found.add(head)
                    else:  # from . import a, b
                        found |= {a.name for a in node.names}
        graph[path.stem] = {m for m in found if m in names and m != path.stem and m != "__main__"}
    return graph


def _circle(graph: dict[str, set[str]]) -> list[str] | None:
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_circle_finder_finds_a_circle():
    assert _circle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _circle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


@pytest.mark.parametrize("package", ["bench"])
def test_modules_import_each_other_without_a_circle(package):
    assert _circle(_imports(package)) is None


def test_compare_is_a_short_orchestration_and_no_stage2_function_is_long():
    source = (ROOT / "classify" / "compare.py").read_text(encoding="utf-8")
    tree = ast.parse(source)
    compare = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "compare")
    body = [n for n in compare.body if not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant))]
    assert body[-1].end_lineno - body[0].lineno + 1 <= 20
    called = {n.func.id for n in ast.walk(compare) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
    assert {"load_and_split", "plan_run", "fit_and_cross_validate", "evaluate", "write_run_json"} <= called
    for path in ("classify/compare.py", "classify/fits.py", "classify/models.py", *map(str, Path(ROOT).glob("classify/heads/*.py"))):
        for node in ast.walk(ast.parse((ROOT / path).read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef):
                assert node.end_lineno - node.lineno + 1 <= 80, (path, node.name)
