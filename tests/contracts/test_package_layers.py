"""The package's structure: no import circles, and no import from a lower layer to a higher one.

Every ``import`` in the package counts (module level or inside a function), except those under
``if TYPE_CHECKING:``, which only type checkers run. The layers, lowest first, are listed in
``LAYERS``; a module may import modules of its own layer and of lower ones.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "moprune"

# lowest first; packages in one tuple share a layer and do not import each other
LAYERS: tuple[tuple[str, ...], ...] = (
    ("moprune.errors", "moprune.version"),
    ("moprune.core",),
    ("moprune.data", "moprune.fronts", "moprune.zoo"),
    ("moprune.training",),
    ("moprune.criteria",),
    ("moprune.evaluation",),
    ("moprune.problems",),
    ("moprune.algorithms",),
    ("moprune.tasks",),
    ("moprune.runs",),
    ("moprune.methods",),
    ("moprune.cli",),
)


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


MODULES = _modules()


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(name: str) -> set[str]:
    """The package's modules ``name`` imports at run time."""
    tree = ast.parse(MODULES[name].read_text())
    found: set[str] = set()
    is_package = MODULES[name].name == "__init__.py"

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("moprune"))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                anchor = name if is_package else name.rsplit(".", 1)[0]
                for _ in range(node.level - 1):
                    anchor = anchor.rsplit(".", 1)[0]
                base = f"{anchor}.{base}" if base else anchor
            if base.startswith("moprune"):
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    found.add(sub if sub in MODULES else base)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return {m for m in found if m in MODULES and m != name}


GRAPH = {name: _imports(name) for name in MODULES}


def _layer(module: str) -> int | None:
    for i, packages in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in packages):
            return i
    return None


def test_every_module_has_a_layer() -> None:
    assert [m for m in MODULES if m != "moprune" and _layer(m) is None] == []


def test_no_import_goes_up_a_layer() -> None:
    upward = []
    for module, imported in GRAPH.items():
        if module == "moprune":  # the package's public API re-exports every layer
            continue
        for target in imported:
            if target == "moprune" or _layer(target) > _layer(module):  # type: ignore[operator]
                upward.append(f"{module} -> {target}")
    assert upward == []


def test_no_import_circles() -> None:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []

    def strong(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in GRAPH[v]:
            if w not in index:
                strong(w)
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
                circles.append(sorted(component))

    for v in GRAPH:
        if v not in index:
            strong(v)
    assert circles == []


def test_the_core_knows_no_model_family_and_no_method() -> None:
    core = [m for m in MODULES if m.startswith("moprune.core")]
    for module in core:
        outside = [t for t in GRAPH[module] if not t.startswith(("moprune.core", "moprune.errors"))]
        assert outside == [], module
        code = re.sub(r'"""[\s\S]*?"""', "", MODULES[module].read_text())  # docstrings aside
        for word in ("OptionA", "option_a", "ccep", "deeppruninges", "evofc"):
            assert not re.search(rf"\b{word}\b", code, re.I), (module, word)
