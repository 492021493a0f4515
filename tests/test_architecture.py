"""The package's layering, checked on its source: no import circle, and each layer imports only those below it.

Imports are read with :mod:`ast` from every file, including those inside functions: a deferred import is still a
dependency, and deferring one to dodge a circle is what these tests forbid. Imports under ``if TYPE_CHECKING:`` are
left out: they name types for annotations and never run.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "cellformers"

#: Subpackages each layer may import (besides the private helpers `_constants`, `_docs`, `_exceptions`,
#: `_settings`, `_utils`, `_version`). Lower layers first.
ALLOWED = {
    "metrics": set(),
    "data": set(),
    "pp": {"data"},
    "checkpoint": {"data"},
    "nn": set(),
    "train": {"metrics"},
    "module": {"data", "nn"},
    "model": {"checkpoint", "data", "metrics", "module", "nn", "pp", "train"},
    "downstream": {"metrics", "model", "pp"},
    "pretrained": {"checkpoint", "data", "model", "pp"},
    "tl": {"data", "metrics", "model", "pp", "train"},
    "pl": {"data", "metrics", "model", "tl"},
}
_PRIVATE = {"_constants", "_docs", "_exceptions", "_settings", "_utils", "_version"}


def _modules() -> dict[str, Path]:
    out = {}
    for path in SRC.rglob("*.py"):
        parts = path.relative_to(SRC.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules that ``name`` imports (``from pkg import submodule`` counts as the submodule only)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    tree = ast.parse(path.read_text())
    typing_only = {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and getattr(node.test, "id", getattr(node.test, "attr", None)) == "TYPE_CHECKING"
        for inner in ast.walk(node)
    }
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            subs = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in modules]
            found.update(subs if len(subs) == len(node.names) else [target, *subs])
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return {m for m in found if m in modules and m != name}


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
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
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_module_imports_in_a_circle(graph):
    assert _cycles(graph) == []


def test_the_cycle_finder_finds_a_circle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_each_layer_imports_only_the_layers_below_it(graph, layer):
    bad = sorted(
        f"{name} imports {target}"
        for name, targets in graph.items()
        if _layer(name) == layer
        for target in targets
        if _layer(target) not in (None, layer, *_PRIVATE, *ALLOWED[layer])
    )
    assert bad == []


def test_nothing_below_the_app_imports_the_package_root(graph):
    # `import cellformers` from inside a layer would import every layer, including those above it
    bad = sorted(name for name, targets in graph.items() if "cellformers" in targets and _layer(name) in ALLOWED)
    assert bad == []


#: A source file longer than this mixes concerns; split it by concern (issue 17 asked for about 600 lines).
MAX_LINES = 620


def test_no_source_file_is_longer_than_the_limit():
    long = {
        str(path.relative_to(SRC)): n
        for path in SRC.rglob("*.py")
        if (n := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}
