"""The package's import graph: no cycles inside any package, no upward imports.

Every ``import`` / ``from ... import`` statement of every module under ``workbench/`` is
parsed with :mod:`ast`, *including* imports inside functions (a function-local import that
dodges a cycle is still a cycle). ``from pkg import name`` is an edge to the submodule
``pkg.name`` when that is a module, else to the package's ``__init__``.

Layers, lowest first (a module may import its own layer and the ones below it):
``core`` -> ``curvature`` -> ``pruning`` -> ``lottery`` -> ``experiments.design`` ->
``experiments.running`` -> ``experiments.analysis`` -> ``notebooks`` -> ``cli`` and the
top-level façade ``workbench/__init__.py``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import workbench

PACKAGE = Path(workbench.__file__).parent
LAYERS = ("core", "curvature", "pruning", "lottery", "experiments.design",
          "experiments.running", "experiments.analysis", "notebooks", "cli", "")


def modules(root: Path = PACKAGE) -> dict[str, Path]:
    """``{"workbench.core.io": path, "workbench.core": path of its __init__, ...}``."""
    found = {}
    for path in root.rglob("*.py"):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def import_graph(found: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the workbench modules it imports anywhere in its body (line numbers kept
    out: one edge per pair)."""
    graph: dict[str, set[str]] = {}
    for name, path in found.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[:len(base) - node.level + 1]
                    module = ".".join(base + ([node.module] if node.module else []))
                else:
                    module = node.module or ""
                for alias in node.names:
                    sub = f"{module}.{alias.name}"
                    targets.add(sub if sub in found else module)
        edges = set()
        for target in targets:
            while target not in found and "." in target:
                target = target.rpartition(".")[0]
            if target in found and target != name:
                edges.add(target)
        graph[name] = edges
    return graph


def layer(module: str) -> int:
    """Index of ``module``'s layer in :data:`LAYERS` (the façade ``workbench`` is last)."""
    inner = module.removeprefix("workbench").removeprefix(".")
    for i, prefix in enumerate(LAYERS[:-1]):
        if inner == prefix or inner.startswith(prefix + "."):
            return i
    if inner in ("", "experiments"):  # the façade and the experiments package's __init__
        return len(LAYERS) - 1 if inner == "" else LAYERS.index("experiments.design")
    raise AssertionError(f"{module} is in no layer; add its package to LAYERS")


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def upward(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    """``(importer, imported)`` pairs where the imported module sits in a higher layer."""
    return sorted((a, b) for a, bs in graph.items() for b in bs if layer(b) > layer(a))


@pytest.fixture(scope="module")
def graph():
    return import_graph(modules())


def test_no_import_cycle_inside_any_package(graph):
    assert cycles(graph) == []


def test_no_upward_import(graph):
    assert upward(graph) == []


def test_stats_is_a_leaf_of_the_experiments_layer(graph):
    assert {m for m in graph["workbench.experiments.analysis.stats"]
            if m.startswith("workbench.experiments")} == set()


def test_the_checks_catch_a_cycle_and_an_upward_import(tmp_path):
    """The two checks fail on a tree that has what they forbid: ``stats`` importing
    ``specs`` inside a function while ``specs`` imports ``stats`` (a cycle through a
    function-local import), and ``core`` importing ``pruning``."""
    root = tmp_path / "workbench"
    files = {
        "__init__.py": "",
        "core/__init__.py": "", "core/io.py": "def f():\n    from workbench.pruning import masks\n",
        "pruning/__init__.py": "", "pruning/masks.py": "",
        "experiments/__init__.py": "", "experiments/analysis/__init__.py": "",
        "experiments/design/__init__.py": "",
        "experiments/analysis/stats.py":
            "def g():\n    from workbench.experiments.analysis import specs\n",
        "experiments/analysis/specs.py": "from workbench.experiments.analysis.stats import g\n",
    }
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    g = import_graph(modules(root))
    assert cycles(g) == [["workbench.experiments.analysis.specs",
                          "workbench.experiments.analysis.stats"]]
    assert upward(g) == [("workbench.core.io", "workbench.pruning.masks")]


def test_every_top_level_name_resolves():
    """Each name of the lazy façade (``workbench.<name>``) imports from its module."""
    missing = [name for name in workbench.__all__ if getattr(workbench, name, None) is None]
    assert missing == []
