"""One-way layers (docs/design.md "Layers"): the package-level import graph has no cycle.

Every import counts, including those inside functions. Modules are the files under sslens/, hooks/
(as sslens.hooks) and analyses/ (as sslens.analyses); a package is ``sslens.<part>``.
"""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOPS = {"sslens": "sslens", "hooks": "sslens.hooks", "analyses": "sslens.analyses"}


def modules() -> dict[str, Path]:
    """Dotted module name -> file."""
    out = {}
    for top, pkg in TOPS.items():
        for f in (ROOT / top).rglob("*.py"):
            rel = f.relative_to(ROOT / top).with_suffix("").parts
            rel = rel[:-1] if rel[-1] == "__init__" else rel
            out[".".join((pkg, *rel))] = f
    return out


def imported(name: str, path: Path, node: ast.Import | ast.ImportFrom) -> list[str]:
    """The dotted names an import statement can refer to (module and module.attr)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if node.level:
        parts = name.split(".")
        keep = len(parts) - node.level + (1 if path.name == "__init__.py" else 0)
        base = ".".join(parts[:keep] + ([node.module] if node.module else []))
    else:
        base = node.module or ""
    return [base] + [f"{base}.{a.name}" for a in node.names]


def package_graph() -> dict[str, set[str]]:
    """``sslens.<part>`` -> the packages it imports (itself excluded)."""
    mods = modules()
    top = lambda m: ".".join(m.split(".")[:2])  # noqa: E731
    graph: dict[str, set[str]] = {top(m): set() for m in mods}
    for m, path in mods.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for t in imported(m, path, node):
                    while t and t not in mods:
                        t = t.rpartition(".")[0]
                    if t and top(t) != top(m):
                        graph[top(m)].add(top(t))
    return graph


def test_graph_is_read():
    g = package_graph()
    assert {"sslens.train", "sslens.store", "sslens.hooks", "sslens.analyses"} <= set(g)
    assert "sslens.store" in g["sslens.train"] and "sslens.errors" in g["sslens.store"]


def test_no_package_import_cycle():
    try:
        order = list(graphlib.TopologicalSorter(package_graph()).static_order())
    except graphlib.CycleError as e:
        pytest.fail(f"package import cycle: {' -> '.join(e.args[1])}")
    assert order.index("sslens.errors") < order.index("sslens.train")

