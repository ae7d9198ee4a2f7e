"""segkit's modules import one way: no circle among them, counting imports inside functions.

An import hidden in a function body still ties the two modules together (each needs the other
to work), so every ``import``/``from ... import`` node at any depth is an edge here.
"""

from __future__ import annotations

import ast
from pathlib import Path

import segkit

PACKAGE_ROOT = Path(segkit.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE_ROOT.rglob("*.py"))}


def _absolute(module: str | None, level: int, current: str, is_package: bool) -> str:
    """The absolute name ``from <level dots><module> import ...`` refers to inside ``current``."""
    if level == 0:
        return module or ""
    base = current.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join([*base, module] if module else base)


def import_graph() -> dict[str, set[str]]:
    """segkit module → the segkit modules it imports anywhere in its source."""
    modules = _modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _absolute(node.module, node.level, name, path.name == "__init__.py")
                # `from segkit.inference import run` imports the submodule segkit.inference.run
                targets = [
                    f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                    for alias in node.names
                ]
            graph[name].update(t for t in targets if t in modules and t != name)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as ``[a, b, ..., a]``, or None when the graph has none."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_find_cycle_names_the_circle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_graph_sees_imports_inside_functions_and_relative_ones() -> None:
    graph = import_graph()
    # segkit.training imports segkit.bundle inside a function only
    assert "segkit.bundle" in graph["segkit.training"]
    assert "segkit.config" in graph["segkit.training"]
    assert _absolute("io", 1, "segkit.data.dataset", False) == "segkit.data.io"
    assert _absolute(None, 2, "segkit.data", True) == "segkit"
    folded = package_graph(
        {"segkit.a.x": {"segkit.b"}, "segkit.b": {"segkit.a.y"}, "segkit.a.y": set()}
    )
    assert find_cycle(folded) == ["segkit.a", "segkit.b", "segkit.a"]


def package_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """The module graph with each subpackage (``segkit.inference``, ...) folded into one node;
    top-level modules (``segkit.bundle``, ...) stay nodes of their own."""

    def node(module: str) -> str:
        return ".".join(module.split(".")[:2])

    folded: dict[str, set[str]] = {}
    for module, targets in graph.items():
        folded.setdefault(node(module), set()).update(
            node(t) for t in targets if node(t) != node(module)
        )
    return folded


def test_no_import_circles_between_modules() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle or [])


def test_no_import_circles_between_packages() -> None:
    """A package is one layer: inference must not need export while export needs inference."""
    cycle = find_cycle(package_graph(import_graph()))
    assert cycle is None, "import circle between packages: " + " -> ".join(cycle or [])
