"""The package's layers import one way, and no modules import each other in a circle.

From the top: the entry points (``cli``, ``gunicorn``, the package itself),
then ``process`` -> ``wsgi`` -> ``server`` -> ``config`` -> ``protocol``. A
module may import its own layer and the layers below it. Imports made only
for type checking (``if TYPE_CHECKING:``) must obey the layers too, but may
close a circle inside a layer (a connection's annotation naming its server).
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path
from typing import Optional

import pytest

import gshutdown

PACKAGE_DIR = Path(gshutdown.__file__).parent
#: Lowest first.
LAYERS = ("protocol", "config", "server", "wsgi", "process")
TOP = len(LAYERS)


def all_modules() -> list[str]:
    names = ["gshutdown"]
    for info in pkgutil.walk_packages([str(PACKAGE_DIR)], prefix="gshutdown."):
        names.append(info.name)
    return sorted(names)


def module_path(name: str) -> Path:
    relative = Path(*name.split(".")[1:])
    package = PACKAGE_DIR / relative / "__init__.py"
    return package if package.exists() else PACKAGE_DIR / relative.with_suffix(".py")


def layer_of(name: str) -> int:
    parts = name.split(".")
    if len(parts) > 1 and parts[1] in LAYERS:
        return LAYERS.index(parts[1])
    return TOP  # gshutdown, gshutdown.cli, gshutdown.gunicorn, gshutdown.__main__


def _is_type_checking_block(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports_of(name: str, modules: set[str]) -> list[tuple[str, bool]]:
    """``(imported module, for type checking only)`` for every gshutdown import in ``name``."""
    tree = ast.parse(module_path(name).read_text())
    found: list[tuple[str, bool]] = []

    def resolve(target: str) -> Optional[str]:
        while target and target not in modules:
            target = target.rpartition(".")[0]
        return target or None

    def visit(node: ast.AST, typing_only: bool) -> None:
        if isinstance(node, ast.If) and _is_type_checking_block(node):
            for child in node.body:
                visit(child, True)
            for child in node.orelse:
                visit(child, typing_only)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "gshutdown":
                    target = resolve(alias.name)
                    if target:
                        found.append((target, typing_only))
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("gshutdown"):
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                target = submodule if submodule in modules else resolve(str(node.module))
                if target:
                    found.append((target, typing_only))
        for child in ast.iter_child_nodes(node):
            visit(child, typing_only)

    visit(tree, False)
    return [(target, typing_only) for target, typing_only in found if target != name]


MODULES = [name for name in all_modules() if name != "gshutdown.__main__"]  # it runs the command


@pytest.mark.parametrize("name", MODULES)
def test_every_module_imports(name: str) -> None:
    importlib.import_module(name)


def test_the_walk_sees_every_layer() -> None:
    # A wrong path would make the checks below pass on nothing.
    assert {layer_of(name) for name in MODULES} == set(range(TOP + 1))
    assert len(imports_of("gshutdown.server.connection", set(MODULES))) > 3


def test_no_module_imports_a_layer_above_its_own() -> None:
    modules = set(MODULES)
    upward = [
        f"{name} ({LAYERS[layer_of(name)]}) imports {target}"
        for name in MODULES
        if layer_of(name) < TOP
        for target, _ in imports_of(name, modules)
        if layer_of(target) > layer_of(name)
    ]
    assert upward == []


def test_no_import_circle() -> None:
    modules = set(MODULES)
    graph = {
        name: sorted({target for target, typing_only in imports_of(name, modules) if not typing_only})
        for name in MODULES
    }
    # The package's __init__ re-exports the public names: importing any
    # submodule runs it first by Python's rules, not by an import of ours.
    graph["gshutdown"] = []
    circles: list[list[str]] = []
    visiting: list[str] = []
    done: set[str] = set()

    def visit(name: str) -> None:
        if name in done:
            return
        if name in visiting:
            circles.append([*visiting[visiting.index(name) :], name])
            return
        visiting.append(name)
        for target in graph[name]:
            visit(target)
        visiting.pop()
        done.add(name)

    for name in MODULES:
        visit(name)
    assert circles == []


#: Past this many lines a module says at its top why it is not split.
LONG_MODULE = 500


def test_a_long_module_says_at_its_top_why_it_is_not_split() -> None:
    unexplained = []
    for name in MODULES:
        lines = module_path(name).read_text().splitlines()
        if len(lines) > LONG_MODULE and not any("over 500 lines" in line.lower() for line in lines[:12]):
            unexplained.append(f"{name}: {len(lines)} lines")
    assert unexplained == []
