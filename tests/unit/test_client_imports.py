"""The Python client's modules import each other in one direction: no circle, typing included."""

from __future__ import annotations

import ast
from pathlib import Path

import asset_client

PACKAGE = Path(asset_client.__file__).parent


def _module(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """{module: the package's modules it imports}, counting imports only made for typing
    (`if TYPE_CHECKING:`) too; generated stubs (_proto) are left out."""
    paths = [p for p in PACKAGE.rglob("*.py") if "_proto" not in p.parts]
    modules = {_module(p) for p in paths}
    graph: dict[str, set[str]] = {}
    for path in paths:
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                for alias in node.names:
                    # `from asset_client import _core` imports a module, not the package's
                    # attribute (the package's __init__ is where every module is gathered).
                    sub = f"{node.module}.{alias.name}"
                    found.add(sub if sub in modules else node.module)
        name = _module(path)
        graph[name] = {m for m in found & modules if m != name}
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Modules that reach themselves again, one list per circle (Tarjan's components)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while (top := stack.pop()) != node:
                component.append(top)
            component.append(node)
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_graph_sees_the_client_modules() -> None:
    graph = import_graph()
    assert {"asset_client._leases", "asset_client.aio", "asset_client.client"} <= set(graph)
    assert "asset_client._leases" in graph["asset_client.aio"]
    assert circles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]


def test_no_client_module_imports_one_that_imports_it_back() -> None:
    """_leases and _materialize name the calls they need as protocols instead of
    importing the clients that create them (which import them)."""
    assert circles(import_graph()) == []
