"""The import graph points one way: no cycle between packages or modules, layers as documented.

ARCHITECTURE.md: ``cli → {export → {optimize, tensorrt, triton}, bench, serve, deploy} →
{recipes, runtime} → bundle → errors``. Imports inside functions count too: a lazy import is
still a dependency.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "edgemm"

# What each low layer may import (besides itself); everything above may import these freely.
ALLOWED = {
    "errors": set(),
    "_deps": {"errors"},
    "fsio": {"errors"},
    "staging": {"errors", "fsio"},
    "bundle": {"errors", "_deps"},
    "recipes": {"bundle", "errors"},
    "runtime": {"bundle", "errors", "_deps", "fsio"},
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every ``edgemm`` module ``path`` imports, at any depth of the file."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and node.module.split(".")[0] == "edgemm":
            found.add(node.module)
            for alias in node.names:  # `from edgemm.x import y` may name a submodule y
                if (PACKAGE.parent / f"{node.module}.{alias.name}".replace(".", "/")).with_suffix(".py").is_file():
                    found.add(f"{node.module}.{alias.name}")
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "edgemm")
    return found


def module_graph() -> dict[str, set[str]]:
    """``module → modules it imports`` over the whole package."""
    graph: dict[str, set[str]] = defaultdict(set)
    for path in PACKAGE.rglob("*.py"):
        name = _module_name(path)
        graph[name] |= {m for m in _imports(path) if m != name}
    return graph


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "edgemm"


def package_graph() -> dict[str, set[str]]:
    """``edgemm.X`` (first level below the package) → the first-level names it imports."""
    graph: dict[str, set[str]] = defaultdict(set)
    for module, targets in module_graph().items():
        for target in targets:
            if _layer(target) not in (_layer(module), "edgemm"):
                graph[_layer(module)].add(_layer(target))
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a path (first node repeated at the end), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt):], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_cycle_between_packages():
    cycle = find_cycle(package_graph())
    assert cycle is None, " → ".join(cycle or [])


def test_no_cycle_between_modules():
    # A package's __init__ re-exporting its own modules is not a dependency cycle.
    graph = {m: {t for t in targets if not (m.startswith(t + ".") and _is_package(t))}
             for m, targets in module_graph().items()}
    cycle = find_cycle(graph)
    assert cycle is None, " → ".join(cycle or [])


def test_low_layers_import_only_what_is_below_them():
    graph = package_graph()
    for layer, allowed in ALLOWED.items():
        extra = graph.get(layer, set()) - allowed
        assert not extra, f"edgemm.{layer} imports {sorted(extra)}; it may import only {sorted(allowed) or 'nothing'}"


def test_the_finder_sees_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def _is_package(module: str) -> bool:
    return (PACKAGE.parent / module.replace(".", "/") / "__init__.py").is_file()
