"""The import graph of the project's packages: every import (module-level and function-local,
relative ones resolved) goes in an allowed direction, and no modules import each other in a cycle.

Layers:
    hoi, ldm        import nothing of the project
    dataset         imports hoi
    interact        imports hoi, ldm
    evaluation      imports hoi, ldm, dataset, interact
    experiments     imports anything of the project; nothing imports it
Entry points (main.py, inference_batch.py, scripts/) are not scanned and may import anything;
no package may import them.

What counts as an edge: `import a.b` and `from a import b` name the module a.b when it exists
(else the deepest module named). Importing a.b also runs a/__init__.py, but that implicit edge
is not counted: every package's __init__ that re-exports its submodules would otherwise be a
cycle. Imports by string (importlib, the configs' `target:`) are not seen.
"""
from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("hoi", "ldm", "dataset", "interact", "evaluation", "experiments")
ENTRY_POINTS = ("main", "inference_batch", "scripts")
PROJECT = PACKAGES + ENTRY_POINTS
ALLOWED: dict[str, frozenset[str]] = {
    "hoi": frozenset(),
    "ldm": frozenset(),
    "dataset": frozenset({"hoi"}),
    "interact": frozenset({"hoi", "ldm"}),
    "evaluation": frozenset({"hoi", "ldm", "dataset", "interact"}),
    "experiments": frozenset(PROJECT),
}

@dataclass(frozen=True)
class Edge:
    importer: str
    imported: str
    file: str
    line: int

    def __str__(self) -> str:
        return f"{self.importer} -> {self.imported} ({self.file}:{self.line})"


def layer(module: str) -> str:
    return module.split(".")[0]


def find_modules(root: Path, packages=PACKAGES) -> dict[str, Path]:
    """{dotted module name: file} for every .py under the packages (a package is its __init__)."""
    out = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def _deepest_module(name: str, modules) -> str:
    """`name` or its longest prefix that is a known module; `name` itself when none is (an
    entry point or a module that does not exist: still an edge into its layer)."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        if ".".join(parts[:end]) in modules:
            return ".".join(parts[:end])
    return name


def _imported_names(node: ast.Import | ast.ImportFrom, importer: str, is_package: bool, modules) -> list[str]:
    if isinstance(node, ast.Import):
        return [_deepest_module(alias.name, modules) for alias in node.names]
    if node.level:
        package = importer.split(".") if is_package else importer.split(".")[:-1]
        package = package[:len(package) - (node.level - 1)]
        base = ".".join(package + ([node.module] if node.module else []))
    else:
        base = node.module or ""
    return [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else _deepest_module(base, modules)
            for alias in node.names]


def collect_edges(root: Path, packages=PACKAGES) -> tuple[dict[str, Path], list[Edge]]:
    """Every import of a project module anywhere in each file (function bodies included)."""
    modules = find_modules(root, packages)
    edges = []
    for module, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            for imported in _imported_names(node, module, path.name == "__init__.py", modules):
                if layer(imported) in PROJECT and imported != module:
                    edges.append(Edge(module, imported, str(path.relative_to(root)), node.lineno))
    return modules, edges


def forbidden_edges(edges: list[Edge]) -> list[Edge]:
    return [e for e in edges if layer(e.importer) != layer(e.imported)
            and layer(e.imported) not in ALLOWED.get(layer(e.importer), frozenset())]


def find_cycles(edges: list[Edge]) -> list[list[Edge]]:
    """One cycle (as its edges) per group of modules that import each other (strongly connected
    components, Tarjan's algorithm)."""
    graph: dict[str, dict[str, Edge]] = {}
    for e in edges:
        graph.setdefault(e.importer, {}).setdefault(e.imported, e)
    index, low, on_stack, stack, components = {}, {}, set(), [], []

    def visit(node: str) -> None:  # the project's graph is a few hundred nodes: recursion is fine
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in graph.get(node, {}):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(component)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return [_cycle_through(min(component), component, graph) for component in components]


def _cycle_through(start: str, component: set[str], graph) -> list[Edge]:
    """The shortest path start -> ... -> start inside the component (breadth first)."""
    came_from: dict[str, Edge] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for succ, edge in sorted(graph.get(node, {}).items()):
                if succ not in component or succ in came_from:
                    continue
                came_from[succ] = edge
                if succ == start:
                    path, at = [], start
                    while True:
                        path.append(came_from[at])
                        at = came_from[at].importer
                        if at == start:
                            return path[::-1]
                following.append(succ)
        frontier = following
    raise AssertionError(f"no cycle through {start} in {sorted(component)}")


def describe_cycle(cycle: list[Edge]) -> str:
    names = " -> ".join([cycle[0].importer] + [e.imported for e in cycle])
    return f"{names}  [" + "; ".join(f"{e.file}:{e.line}" for e in cycle) + "]"


# ----------------------------------------------------------------------------- the checker itself

def write_package(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_checker_catches_a_forbidden_edge_and_a_cycle(tmp_path):
    write_package(tmp_path, {
        "hoi/__init__.py": "",
        "hoi/records.py": "import torch\n\ndef f():\n    from interact.model import Model\n",  # leaf imports up
        "interact/__init__.py": "",
        "interact/model.py": "import hoi\n",                                                  # allowed
        "interact/pipeline.py": "from . import model\n\ndef g():\n    from .loading import h\n",
        "interact/loading.py": "from interact import pipeline\n",            # cycle through a local import
        "interact/sub/__init__.py": "from ..model import Model\n",             # relative, two levels
        "evaluation/__init__.py": "",
        "evaluation/score.py": "import interact.sub\nimport experiments.table\n",   # experiments: forbidden
        "experiments/__init__.py": "",
        "experiments/table.py": "import evaluation\nimport main\n",                 # experiments may
    })
    modules, edges = collect_edges(tmp_path)
    assert set(modules) == {"hoi", "hoi.records", "interact", "interact.model", "interact.pipeline",
                            "interact.loading", "interact.sub", "evaluation", "evaluation.score", "experiments",
                            "experiments.table"}
    pairs = {(e.importer, e.imported) for e in edges}
    assert ("interact.sub", "interact.model") in pairs and ("interact.pipeline", "interact.model") in pairs
    assert ("interact.pipeline", "interact.loading") in pairs and ("evaluation.score", "interact.sub") in pairs
    assert not any(e.imported == "torch" for e in edges)
    bad = forbidden_edges(edges)
    assert sorted(map(str, bad)) == ["evaluation.score -> experiments.table (evaluation/score.py:2)",
                                     "hoi.records -> interact.model (hoi/records.py:4)"]
    cycles = find_cycles(edges)
    assert [describe_cycle(c) for c in cycles] == [
        "interact.loading -> interact.pipeline -> interact.loading  "
        "[interact/loading.py:1; interact/pipeline.py:4]"]


def test_checker_names_a_longer_cycle_once(tmp_path):
    write_package(tmp_path, {"ldm/__init__.py": "", "ldm/a.py": "import ldm.b\n", "ldm/b.py": "from ldm import c\n",
                             "ldm/c.py": "from .a import x\n", "ldm/d.py": "import ldm.a\n"})
    _, edges = collect_edges(tmp_path)
    assert [describe_cycle(c).split("  ")[0] for c in find_cycles(edges)] == ["ldm.a -> ldm.b -> ldm.c -> ldm.a"]


# ----------------------------------------------------------------------------- the project

def project_edges() -> list[Edge]:
    modules, edges = collect_edges(REPO_ROOT)
    # not vacuous: the scan sees the packages' modules and a function-local import
    assert {"hoi.records", "interact.checkpoint.loading", "evaluation.layout_gain",
            "experiments.toy_table"} <= set(modules)
    assert any(e.importer == "experiments.toy_table" and e.imported == "interact.trainer" for e in edges)
    return edges


def test_imports_go_in_allowed_directions_only():
    bad = forbidden_edges(project_edges())
    assert not bad, "imports against the layering:\n  " + "\n  ".join(map(str, bad))


def test_no_import_cycles():
    cycles = find_cycles(project_edges())
    assert not cycles, "modules importing each other:\n  " + "\n  ".join(map(describe_cycle, cycles))
