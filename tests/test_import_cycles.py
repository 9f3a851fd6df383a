"""No import cycle inside escalate/: every import counts, the lazy ones inside functions too.

A cycle hidden behind a function-level import still ties the modules together (neither can be
understood, tested or moved without the other), so the check reads every `import` statement with
`ast`, not only the ones Python runs at import time; `if TYPE_CHECKING:` ones too, since a module that
needs another's types depends on it as much as one that calls it. Importing `a.b.c` runs `a/__init__`
and `a/b/__init__` too, so those count as edges, except a package the importing module lives in (its
own `__init__` is already running).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "escalate"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported(node: ast.AST, name: str, is_package: bool, known: set[str]) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if not isinstance(node, ast.ImportFrom):
        return []
    base = node.module or ""
    if node.level:
        package = name if is_package else name.rpartition(".")[0]
        for _ in range(node.level - 1):
            package = package.rpartition(".")[0]
        base = f"{package}.{base}" if base else package
    return [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]


def imports_of(path: Path, known: set[str]) -> set[str]:
    """The escalate modules that importing `path` runs (its packages' __init__ included)."""
    name, tree = module_name(path), ast.parse(path.read_text())
    edges: set[str] = set()
    for node in ast.walk(tree):
        for target in _imported(node, name, path.name == "__init__.py", known):
            while target and target not in known:
                target = target.rpartition(".")[0]
            parts = target.split(".") if target else []
            for i in range(1, len(parts) + 1):
                package = ".".join(parts[:i])
                if package in known and package != name and not name.startswith(package + "."):
                    edges.add(package)
    return edges


def import_graph() -> dict[str, set[str]]:
    files = {module_name(f): f for f in PACKAGE.rglob("*.py")}
    return {name: imports_of(path, set(files)) for name, path in files.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Groups of modules that import each other, directly or through others (Tarjan's components)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while not group or group[-1] != v:
                group.append(stack.pop())
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_escalate_has_no_import_cycle() -> None:
    found = cycles(import_graph())
    detail = "\n".join(
        "  " + ", ".join(group) + "\n    edges: " + "; ".join(
            f"{m} -> {', '.join(sorted(import_graph()[m] & set(group)))}" for m in group)
        for group in found)
    assert not found, f"import cycles in escalate/:\n{detail}"


def test_the_check_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
