"""Every public definition of the package says what it is for (what, args, returns, raises)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "edgemm"


def _documented_methods(trees: dict[Path, ast.Module]) -> dict[str, tuple[list[str], set[str]]]:
    """``class name → (base names, names of its documented methods)`` over the package."""
    index: dict[str, tuple[list[str], set[str]]] = {}
    for tree in trees.values():
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                bases = [b.id if isinstance(b, ast.Name) else b.attr for b in node.bases
                         if isinstance(b, (ast.Name, ast.Attribute))]
                documented = {f.name for f in node.body
                              if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef)) and ast.get_docstring(f)}
                index[node.name] = (bases, documented)
    return index


def _inherits_doc(index: dict[str, tuple[list[str], set[str]]], cls: str, method: str, seen: set[str]) -> bool:
    """Whether a base class of ``cls`` defined in the package documents ``method`` (an override
    of a documented interface method, e.g. a Contender's ``e2e``, shares its contract)."""
    for base in index.get(cls, ([], set()))[0]:
        if base in seen or base not in index:
            continue
        seen.add(base)
        if method in index[base][1] or _inherits_doc(index, base, method, seen):
            return True
    return False


def public_definitions_without_docstring(root: Path = PACKAGE) -> list[str]:
    """``path:line name`` of every public module, class, function or method lacking a docstring.

    Public: the name has no leading underscore, and (for methods) its class is public too.
    Nested functions are implementation details and are not counted; a method overriding a
    documented method of a package base class shares that docstring.
    """
    trees = {path: ast.parse(path.read_text(encoding="utf-8")) for path in sorted(root.rglob("*.py"))}
    index = _documented_methods(trees)
    missing = []
    for path, tree in trees.items():
        rel = path.relative_to(root.parent)
        if not ast.get_docstring(tree):
            missing.append(f"{rel}:1 (module)")

        def visit(body: list[ast.stmt], owner: str = "", rel: Path = rel) -> None:
            for node in body:
                if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    continue
                if node.name.startswith("_"):
                    continue
                inherited = bool(owner) and _inherits_doc(index, owner[:-1], node.name, set())
                if not ast.get_docstring(node) and not inherited:
                    missing.append(f"{rel}:{node.lineno} {owner}{node.name}")
                if isinstance(node, ast.ClassDef):
                    visit(node.body, f"{node.name}.", rel)

        visit(tree.body)
    return missing


def test_every_public_definition_has_a_docstring():
    missing = public_definitions_without_docstring()
    assert not missing, f"{len(missing)} public definitions lack a docstring:\n" + "\n".join(missing)
