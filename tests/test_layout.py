"""The package's shape (issue 19): small modules, small classes, no import cycles, thin fronts.

Read from the source with ``ast``, nothing imported: what the folder tree promises a new
engineer must stay true as the code grows.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "logexec"
MAX_MODULE_LINES = 600
MAX_CLASS_LINES = 400
MAX_TOP_LEVEL_MODULES = 14
# The fronts: each reaches the channel only through its seam, the package logexec._channel.
FRONTS = ("logexec._executor", "logexec._interp", "logexec._mp", "logexec.dask", "logexec.joblib")
SEAM = "logexec._channel"


def _modules() -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its ``__init__``)."""
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """The package's modules that ``name`` imports, anywhere in it (a deferred import too).

    ``from X import y`` counts as importing ``X.y`` where that is a module, else ``X``. The
    parent packages Python imports on the way are not counted: they are not the module's
    choice, and a package's ``__init__`` may import its own modules.
    """
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                submodule = f"{source}.{alias.name}"
                found.add(submodule if submodule in MODULES else source)
    return {module for module in found if module in MODULES and module != name}


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _cycles() -> list[list[str]]:
    """Every strongly connected component of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for imported in sorted(GRAPH[module]):
            if imported not in index:
                visit(imported)
                low[module] = min(low[module], low[imported])
            elif imported in on_stack:
                low[module] = min(low[module], index[imported])
        if low[module] == index[module]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == module:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for module in sorted(GRAPH):
        if module not in index:
            visit(module)
    return components


@pytest.mark.timeout(10)
def test_no_module_imports_itself_through_others() -> None:
    """No two modules of the package import each other, directly or through others."""
    assert _cycles() == []


@pytest.mark.timeout(10)
def test_the_checker_sees_a_cycle() -> None:
    """The cycle check finds a cycle when there is one (and walked the whole package)."""
    assert len(MODULES) >= 20
    GRAPH["logexec._compat"].add("logexec._dispatch")
    GRAPH["logexec._dispatch"].add("logexec._compat")
    try:
        assert ["logexec._compat", "logexec._dispatch"] in _cycles()
    finally:
        GRAPH["logexec._compat"].discard("logexec._dispatch")
        GRAPH["logexec._dispatch"].discard("logexec._compat")


@pytest.mark.timeout(10)
def test_modules_are_at_most_600_lines() -> None:
    """No module of the package is longer than 600 lines."""
    lengths = {name: len(path.read_text(encoding="utf-8").splitlines()) for name, path in MODULES.items()}
    assert {name: length for name, length in lengths.items() if length > MAX_MODULE_LINES} == {}


@pytest.mark.timeout(10)
def test_classes_are_at_most_400_lines() -> None:
    """No class of the package is longer than 400 lines."""
    long = {}
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef):
                assert node.end_lineno is not None
                length = node.end_lineno - node.lineno + 1
                if length > MAX_CLASS_LINES:
                    long[f"{name}.{node.name}"] = length
    assert long == {}


@pytest.mark.timeout(10)
def test_at_most_14_modules_directly_in_the_package() -> None:
    """At most 14 modules sit directly in logexec/; the rest are in a folder per concern."""
    top_level = sorted(path.name for path in PACKAGE.glob("*.py"))
    assert len(top_level) <= MAX_TOP_LEVEL_MODULES, top_level


@pytest.mark.timeout(10)
def test_fronts_reach_the_channel_only_through_its_seam() -> None:
    """The executor, Dask and joblib fronts import logexec._channel, never its private modules."""
    reaching = {
        name: sorted(module for module in imported if module.startswith(SEAM + "."))
        for name, imported in GRAPH.items()
        if name.startswith(FRONTS)
    }
    assert {name: modules for name, modules in reaching.items() if modules} == {}
