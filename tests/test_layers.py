"""The package's shape: no module imports another that imports it back (directly or around a
circle, counting imports made only for type checking or inside functions), nothing the Catalog
hands work to imports the Catalog, and docs/architecture.md's dependency table is what the
imports say."""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "imgsearch"
# modules every layer may use: the exceptions, plain records, settings and the catalog's context
# (and the public names, `imgsearch/__init__.py`, which entry points import)
SHARED = {"errors", "records", "settings", "context"}
# tools that drive a whole Catalog sit above it (as the CLI and the HTTP service do)
ABOVE_CATALOG = {
    "imgsearch", "imgsearch.cli", "imgsearch.server", "imgsearch.contrib", "imgsearch.demo",
    "imgsearch.quality.evaluation", "imgsearch.learning.simulate", "imgsearch.learning.judgments",
}  # fmt: skip


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@cache
def modules() -> dict[str, Path]:
    return {_module_name(path): path for path in PACKAGE.rglob("*.py")}


def _owner(name: str) -> str | None:
    """The package module ``name`` resolves to (a name imported from a module: that module)."""
    known = modules()
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


@cache
def imports() -> dict[str, frozenset[str]]:
    """Each module's imports of imgsearch modules: every import statement, wherever it stands."""
    graph: dict[str, frozenset[str]] = {}
    for name, path in modules().items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found.update(filter(None, (_owner(alias.name) for alias in node.names)))
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*up, base] if base else up)
                for alias in node.names:
                    owner = _owner(f"{base}.{alias.name}")
                    found.update(filter(None, [owner if owner and owner != base else _owner(base)]))
        found.discard(name)
        graph[name] = frozenset(found)
    return graph


def _circles(graph: dict[str, frozenset[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return groups


def test_the_import_graph_is_read_whole() -> None:
    graph = imports()
    # a module-level import, one under TYPE_CHECKING and one inside a function are all seen
    assert "imgsearch.db.citus" in graph["imgsearch.db.migrate"]
    assert "imgsearch.context" in graph["imgsearch.ingest.uploads"]  # type checking only
    assert "imgsearch.db.embedded" in graph["imgsearch.cli.database"]  # inside a function
    assert _circles({"a": frozenset({"b"}), "b": frozenset({"c"}), "c": frozenset({"a"}), "d": frozenset()}) == [
        ["a", "b", "c"]
    ]


def test_no_module_imports_itself_back_around_a_circle() -> None:
    assert _circles(dict(imports())) == []


def test_only_tools_above_the_catalog_import_it() -> None:
    importers = {name for name, found in imports().items() if "imgsearch.catalog" in found}
    above = {name for name in importers if any(name == top or name.startswith(top + ".") for top in ABOVE_CATALOG)}
    assert importers == above, sorted(importers - above)
    handed = {_owner(f"imgsearch.{name}") for name in _handed_over()}
    assert handed and not any("imgsearch.catalog" in imports()[name] for name in handed if name)


def _handed_over() -> set[str]:
    """The modules catalog.py calls into (its ``from imgsearch.x import y`` names)."""
    tree = ast.parse((PACKAGE / "catalog.py").read_text())
    called: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("imgsearch."):
            for alias in node.names:
                name = f"{node.module}.{alias.name}"
                called.add((name if name in modules() else node.module).removeprefix("imgsearch."))
    return called


def _layer(module: str) -> str:
    """A module's row in the table: its subpackage (``ingest/``) or top-level module (``catalog.py``)."""
    parts = module.split(".")
    if len(parts) == 1:
        return "__init__.py"
    return f"{parts[1]}/" if (PACKAGE / parts[1]).is_dir() else f"{parts[1]}.py"


def _documented() -> dict[str, set[str]]:
    text = (ROOT / "docs" / "architecture.md").read_text()
    table = text[text.index("| package | one job | depends on |") :].split("\n\n")[0]
    rows: dict[str, set[str]] = {}
    for line in table.splitlines()[2:]:
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        layer = re.sub(r"`([^`]+)`.*", r"\1", cells[0])
        rows[layer] = set(re.findall(r"`([a-z_]+(?:/|\.py))`", cells[2]))
    return rows


def test_the_architecture_table_names_each_layers_imports() -> None:
    actual: dict[str, set[str]] = {}
    for module, found in imports().items():
        layer = _layer(module)
        for other in found:
            target = _layer(other)
            if target not in {layer, "__init__.py"} and target.removesuffix(".py") not in SHARED:
                actual.setdefault(layer, set()).add(target)
    documented = _documented()
    for layer in sorted(set(actual) | set(documented)):
        if layer in {"__init__.py", "__main__.py"} or layer.removesuffix(".py") in SHARED:
            continue  # the public names, `python -m imgsearch`, and the modules shared by all
        if not (PACKAGE / layer).exists():
            continue  # workers/, at the repository's root
        assert documented.get(layer, set()) == actual.get(layer, set()), layer
