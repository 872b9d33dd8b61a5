"""The package's shape, read statically from its source (AST, nothing imported): no import cycles between
tracekit modules, no module over 600 lines without a reason, and the layering rules of DESIGN.md.

Every import counts, including lazy ones inside functions (a cycle closed by a lazy import is still a
cycle: issue #15's cycle (a) was one); imports under ``if TYPE_CHECKING:`` do not. A module over 600
lines passes when its docstring says why, in a sentence with "lines" and "because" (e.g. "Over 600
lines because ...").
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import networkx as nx

from foundation_helpers import REPO

PACKAGE = REPO / "tracekit"
MAX_LINES = 600


@dataclass(frozen=True)
class Import:
    src: str  # importing module
    dst: str  # imported tracekit module (or package)
    line: int
    lazy: bool  # inside a function body

    def where(self) -> str:
        path = _path_of(self.src)
        return f"{path.relative_to(REPO)}:{self.line}"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES: dict[str, Path] = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _path_of(module: str) -> Path:
    return MODULES[module]


def _resolve(name: str) -> str | None:
    """The tracekit module `name` refers to: itself, or the nearest enclosing module (an attribute import)."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(module: str, path: Path) -> list[Import]:
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: list[Import] = []

    def visit(node: ast.AST, lazy: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for sub in child.orelse:
                    visit(sub, lazy)
                continue
            inner = lazy or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            targets: list[str] = []
            if isinstance(child, ast.Import):
                targets = [a.name for a in child.names]
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".")
                    base = base[: len(base) - (child.level - 1)]
                    stem = ".".join(base + ([child.module] if child.module else []))
                else:
                    stem = child.module or ""
                targets = [f"{stem}.{a.name}" for a in child.names]  # a submodule, or an attribute of `stem`
            for target in targets:
                dst = _resolve(target)
                if dst is not None and dst != module:
                    found.append(Import(module, dst, child.lineno, inner))
            visit(child, inner)

    visit(tree, False)
    return found


IMPORTS: list[Import] = [imp for module, path in MODULES.items() for imp in _imports(module, path)]


def _graph() -> nx.DiGraph:
    g = nx.DiGraph()
    g.add_nodes_from(MODULES)
    for imp in IMPORTS:
        if g.has_edge(imp.src, imp.dst):
            g[imp.src][imp.dst]["imports"].append(imp)
        else:
            g.add_edge(imp.src, imp.dst, imports=[imp])
    return g


def _describe_cycle(g: nx.DiGraph, cycle: list[str]) -> str:
    steps = []
    for a, b in zip(cycle, cycle[1:] + cycle[:1]):
        imp = g[a][b]["imports"][0]
        steps.append(f"    {a} -> {b}  ({imp.where()}{', lazy' if imp.lazy else ''})")
    return "\n".join(steps)


def test_the_walker_sees_the_package() -> None:
    assert "tracekit.cli" in MODULES and "tracekit.analysis.causality" in MODULES
    assert any(i.src == "tracekit.cli.analyze" and i.dst == "tracekit.analysis" and i.lazy for i in IMPORTS)


def test_no_import_cycles_between_tracekit_modules() -> None:
    g = _graph()
    groups = sorted((sorted(c) for c in nx.strongly_connected_components(g) if len(c) > 1), key=lambda c: c[0])
    report = []
    for group in groups:
        cycle = nx.find_cycle(g.subgraph(group))
        report.append(f"  cycle through {len(group)} modules ({', '.join(group)}); one loop:\n"
                      + _describe_cycle(g, [a for a, _b in cycle]))
    assert not groups, f"{len(groups)} import cycle(s):\n" + "\n".join(report)


def test_no_module_over_600_lines_without_a_reason() -> None:
    long = []
    for module, path in MODULES.items():
        lines = len(path.read_text().splitlines())
        if lines <= MAX_LINES:
            continue
        doc = (ast.get_docstring(ast.parse(path.read_text())) or "").lower()
        if not ("lines" in doc and "because" in doc):
            long.append(f"  {path.relative_to(REPO)}: {lines} lines, no reason in its docstring")
    assert not long, "split these modules, or say at their top why they are longer:\n" + "\n".join(long)


def test_every_module_opens_with_a_docstring() -> None:
    missing = [str(p.relative_to(REPO)) for p in MODULES.values() if not ast.get_docstring(ast.parse(p.read_text()))]
    assert not missing, f"modules without a one-line docstring of their responsibility: {missing}"


def _in(module: str, *packages: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def _violations(src_packages: tuple[str, ...], forbidden: tuple[str, ...], *, allow_lazy: tuple[str, ...] = ()) -> list[str]:
    found = [f"  {imp.where()}: {imp.src} imports {imp.dst}" + (" (lazily)" if imp.lazy else "")
             for imp in IMPORTS
             if _in(imp.src, *src_packages) and _in(imp.dst, *forbidden)
             and not (imp.lazy and _in(imp.dst, *allow_lazy))]
    return list(dict.fromkeys(found))  # one line per import statement and target


def test_capture_imports_nothing_of_store_graph_analysis_or_inject() -> None:
    """Capture runs inside user processes; its ingest-at-exit calls the ingest pipeline's entry point lazily."""
    bad = _violations(("tracekit.capture",), ("tracekit.store", "tracekit.graph", "tracekit.analysis", "tracekit.inject",
                                              "tracekit.ingest"), allow_lazy=("tracekit.ingest",))
    assert not bad, "capture must not reach into these (DESIGN.md, layout):\n" + "\n".join(bad)


def test_importers_import_nothing_of_store() -> None:
    bad = _violations(("tracekit.importers",), ("tracekit.store",))
    assert not bad, "importers are pure parsers returning Arrow tables:\n" + "\n".join(bad)


def test_conventions_imports_nothing_of_tracekit() -> None:
    bad = [f"  {imp.where()}: imports {imp.dst}" for imp in IMPORTS if imp.src == "tracekit.conventions"]
    assert not bad, "tracekit/conventions.py is the one shared leaf:\n" + "\n".join(bad)


def test_analysis_and_graph_read_the_store_never_capture_or_inject() -> None:
    bad = _violations(("tracekit.analysis", "tracekit.graph"), ("tracekit.capture", "tracekit.inject"))
    assert not bad, "analyses read the store through typed queries (DESIGN.md):\n" + "\n".join(bad)
