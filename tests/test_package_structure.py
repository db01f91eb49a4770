"""The package's import structure: no cycles, and no module imports another module's private names.

grimp (the import graph behind import-linter) reads every import statement of the package,
including the deferred ones inside functions; imports under ``TYPE_CHECKING`` are not
executed and are left out. Data flows one way (cli → api → diagnosis → runners → graph →
spec), so any cycle is a design error.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

grimp = pytest.importorskip("grimp", reason="grimp builds the import graph (pip install grimp)")

ROOT = Path(__file__).resolve().parents[1]


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on: set[str] = set()
    stack: list[str] = []
    out: list[list[str]] = []
    counter = 0
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            nxt = next(it, None)
            if nxt is not None:
                if nxt not in index:
                    index[nxt] = low[nxt] = counter
                    counter += 1
                    stack.append(nxt)
                    on.add(nxt)
                    work.append((nxt, iter(sorted(edges.get(nxt, ())))))
                elif nxt in on:
                    low[v] = min(low[v], index[nxt])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def test_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    g = grimp.build_graph("layerbisect", include_external_packages=False, exclude_type_checking_imports=True)
    edges = {m: set(g.find_modules_directly_imported_by(m)) for m in g.modules}
    cycles = _cycles(edges)
    detail = []
    for comp in cycles:
        members = set(comp)
        detail.append("; ".join(f"{a} -> {b}" for a in comp for b in sorted(edges[a] & members)))
    assert not cycles, "import cycles:\n" + "\n".join(detail)


def _private_imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    bad = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module != "__future__":
            src = ("." * node.level) + (node.module or "")
            if node.level == 0 and not (node.module or "").startswith("layerbisect"):
                continue  # other projects' conventions are theirs
            for alias in node.names:
                if alias.name.startswith("_") and not alias.name.startswith("__"):
                    bad.append(f"{path.relative_to(ROOT)}:{node.lineno}: from {src} import {alias.name}")
    return bad


def test_no_module_imports_another_modules_private_names():
    files = sorted((ROOT / "layerbisect").rglob("*.py")) + sorted((ROOT / "tests").rglob("*.py"))
    bad = [line for f in files for line in _private_imports(f)]
    assert not bad, "\n".join(bad)
