"""segkit's modules import one way: no circle among them, and no module imports one of a higher
layer (:data:`LAYERS`), counting imports inside functions.

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
                # `from segkit.pipeline import run` imports the submodule segkit.pipeline.run
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
    # segkit.training.run_dir imports segkit.bundle inside a function only
    assert "segkit.bundle" in graph["segkit.training.run_dir"]
    assert "segkit.config" in graph["segkit.training.run_dir"]
    assert _absolute("images", 1, "segkit.io.sources", False) == "segkit.io.images"
    assert _absolute(None, 2, "segkit.data", True) == "segkit"
    folded = package_graph(
        {"segkit.a.x": {"segkit.b"}, "segkit.b": {"segkit.a.y"}, "segkit.a.y": set()}
    )
    assert find_cycle(folded) == ["segkit.a", "segkit.b", "segkit.a"]


def package_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """The module graph with each subpackage (``segkit.engine``, ...) folded into one node;
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
    """A package is one unit: the engine must not need export while export needs the engine."""
    cycle = find_cycle(package_graph(import_graph()))
    assert cycle is None, "import circle between packages: " + " -> ".join(cycle or [])


LAYERS: list[tuple[str, list[str]]] = [
    ("base", ["segkit", "segkit.errors", "segkit.utils", "segkit.config", "segkit.normalization"]),
    ("io", ["segkit.io"]),
    ("model", ["segkit.card", "segkit.bundle", "segkit.models.build"]),
    ("engine", ["segkit.engine"]),
    ("export", ["segkit.export"]),
    ("data", ["segkit.data", "segkit.models"]),
    ("pipeline", ["segkit.pipeline", "segkit.evaluation"]),
    ("training", ["segkit.training"]),
    ("app", ["segkit.cli", "segkit.demo", "segkit.__main__"]),
]
"""segkit's layers, lowest first: a module may import its own layer and those below, never one
above. An entry names a module or a package (all its submodules, ``segkit.config.*`` included);
the longest entry that matches decides (``segkit.models.build`` is below the engine, the rest of
``segkit.models`` above it). ``segkit`` itself is base: its public names are imported lazily, by
name, when first used. Export sits right above the engine, so it can use only the engine, the
model card, io and base. The rule in words: CONTRIBUTING.md, "Layout"."""


def layer_of(module: str, layers: list[tuple[str, list[str]]]) -> int | None:
    """Index in ``layers`` of ``module``'s layer (longest matching entry), None when unlisted."""
    best: tuple[int, int] | None = None  # (entry length, layer index)
    for index, (_, entries) in enumerate(layers):
        for entry in entries:
            root = "." not in entry  # the top package names itself only, not everything
            if module == entry or (not root and module.startswith(entry + ".")):
                if best is None or len(entry) > best[0]:
                    best = (len(entry), index)
    return None if best is None else best[1]


def upward_imports(
    graph: dict[str, set[str]], layers: list[tuple[str, list[str]]]
) -> tuple[list[str], list[str]]:
    """The imports of a module of a higher layer (``a (low) imports b (high)``), and the modules
    no layer lists."""
    upward, unlisted = [], []
    for module in sorted(graph):
        here = layer_of(module, layers)
        if here is None:
            unlisted.append(module)
            continue
        for target in sorted(graph[module]):
            there = layer_of(target, layers)
            if there is not None and there > here:
                upward.append(f"{module} ({layers[here][0]}) imports {target} ({layers[there][0]})")
    return upward, unlisted


def test_upward_imports_are_found() -> None:
    layers = [("low", ["segkit", "segkit.lo", "segkit.pkg.base"]), ("high", ["segkit.pkg"])]
    graph = {
        "segkit": set(),
        "segkit.lo.x": {"segkit.pkg.base"},  # same layer, through the longer entry: fine
        "segkit.lo.y": {"segkit.pkg.top"},  # up: found
        "segkit.pkg.top": {"segkit.lo.x", "segkit"},  # down: fine
        "segkit.pkg.base": set(),
        "segkit.stray": {"segkit.pkg.top"},  # in no layer ("segkit" names itself only)
    }
    assert upward_imports(graph, layers) == (
        ["segkit.lo.y (low) imports segkit.pkg.top (high)"],
        ["segkit.stray"],
    )
    assert layer_of("segkit.config.schema", LAYERS) == 0
    assert layer_of("segkit.training.loggers", LAYERS) == layer_of("segkit.training.plan", LAYERS)
    assert layer_of("segkit.models.build", LAYERS) < layer_of("segkit.engine.predictor", LAYERS)
    assert layer_of("segkit.training.module", LAYERS) > layer_of("segkit.engine.predictor", LAYERS)


def test_no_module_imports_a_higher_layer() -> None:
    upward, unlisted = upward_imports(import_graph(), LAYERS)
    assert unlisted == [], "modules in no layer (add them to LAYERS): " + ", ".join(unlisted)
    assert upward == [], "imports of a higher layer:\n" + "\n".join(upward)


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def private_library_uses(sources: dict[str, str]) -> list[str]:
    """Places where segkit code reaches into another library's private API: an import from a
    ``_``-prefixed module or of a ``_``-prefixed name from outside segkit, ``obj._name`` on
    anything but ``self``/``cls``, and ``self._name`` that no segkit class defines (so it was
    inherited from a library base class, as ``CSVLogger._experiment`` / ``._fs`` were)."""
    trees = {name: ast.parse(text) for name, text in sources.items()}
    defined: set[str] = set()
    for tree in trees.values():
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                defined.add(node.name)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                defined.add(node.attr)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                defined.add(node.id)
    found = []
    for name, tree in trees.items():
        for node in ast.walk(tree):
            where = f"{name}:{getattr(node, 'lineno', '?')}"
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                if node.module.split(".")[0] == "segkit":
                    continue
                if any(_private(part) for part in node.module.split(".")) or any(
                    _private(a.name) for a in node.names
                ):
                    found.append(f"{where}: from {node.module} import ...")
            elif isinstance(node, ast.Import):
                found += [f"{where}: import {a.name}" for a in node.names if "._" in a.name]
            elif isinstance(node, ast.Attribute) and _private(node.attr):
                on_self = isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")
                if not on_self or node.attr not in defined:
                    found.append(f"{where}: {ast.unparse(node)}")
    return found


def test_private_library_uses_are_found() -> None:
    old_logger = """
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.fabric.utilities.cloud_io import _is_dir
from lightning.pytorch.trainer.connectors._x import y

class W(ExperimentWriter):
    def _rewrite_with_new_header(self, keys):
        self._mine = 1
        return self._mine, self._fs, trainer._accelerator_connector
"""
    found = private_library_uses({"old": old_logger})
    assert [f.split(": ", 1)[1] for f in found] == [
        "from lightning.fabric.utilities.cloud_io import ...",
        "from lightning.pytorch.trainer.connectors._x import ...",
        "self._fs",
        "trainer._accelerator_connector",
    ]


def test_segkit_uses_no_private_library_api() -> None:
    sources = {name: path.read_text() for name, path in _modules().items()}
    assert private_library_uses(sources) == []
    text = "\n".join(sources.values())
    for name in ("_rewrite_with_new_header", "_experiment", "_fs", "ExperimentWriter"):
        assert name not in text, name
