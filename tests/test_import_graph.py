"""The import graph of our packages: no cycles, services never import each other, shared stays light.

Read from the source with ``ast`` (nothing is imported), counting imports anywhere in a module,
function-level ones included: a cycle hidden inside a function is still a cycle. Imports under
``if TYPE_CHECKING:`` are left out: they never run, so they are annotations, not dependencies.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("shared", "services", "training", "gmem", "scripts", "bench")
# The units whose dependencies must form a DAG: services are split in two, the rest are one each.
UNITS = ("services.bank", "services.generator", "shared", "training", "gmem", "scripts", "bench")
# Modules that must be free of module-level cycles among themselves (training's own layout is checked
# by its own tests).
ACYCLIC_MODULES = ("shared", "services")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    this = module_name(path)
    package = this if path.name == "__init__.py" else this.rpartition(".")[0]
    out: set[str] = set()
    typing_only = {
        id(n)
        for block in ast.walk(tree)
        if _is_type_checking_block(block)
        for stmt in block.body
        for n in ast.walk(stmt)
    }
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            out.add(prefix)
            out.update(f"{prefix}.{alias.name}" for alias in node.names)
    return out


def _is_type_checking_block(node: ast.AST) -> bool:
    if not isinstance(node, ast.If):
        return False
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def test_type_checking_imports_are_not_dependencies(tmp_path: Path) -> None:
    mod = ROOT / "shared" / "__init__.py"  # any file under ROOT works for module_name()
    src = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import services.bank\nimport training\n"
    probe = mod.with_name("_probe_import_graph.py")
    try:
        probe.write_text(src)
        found = imports_of(probe)
    finally:
        probe.unlink(missing_ok=True)
    assert "training" in found and "services.bank" not in found


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    return {name: {m for m in imports_of(p) if m in modules and m != name} for name, p in modules.items()}


def unit_of(module: str) -> str | None:
    return next((u for u in UNITS if module == u or module.startswith(u + ".")), None)


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (found := visit(node)):
            return found
    return None


@pytest.fixture(scope="module")
def edges() -> dict[str, set[str]]:
    return graph()


def test_no_cycles_between_packages(edges: dict[str, set[str]]) -> None:
    units: dict[str, set[str]] = defaultdict(set)
    for src, dsts in edges.items():
        a = unit_of(src)
        for dst in dsts:
            b = unit_of(dst)
            if a and b and a != b:
                units[a].add(b)
    assert find_cycle(units) is None, f"package cycle: {' -> '.join(find_cycle(units) or [])}"


def test_no_module_cycles_in_shared_and_services(edges: dict[str, set[str]]) -> None:
    mine = {
        m: {d for d in ds if d.startswith(ACYCLIC_MODULES)}
        for m, ds in edges.items()
        if m.startswith(ACYCLIC_MODULES)
    }
    cycle = find_cycle(mine)
    assert cycle is None, f"import cycle: {' -> '.join(cycle or [])}"


def test_services_never_import_each_other(edges: dict[str, set[str]]) -> None:
    bad = [
        (src, dst)
        for src, dsts in edges.items()
        for dst in dsts
        if unit_of(src) in ("services.bank", "services.generator")
        and unit_of(dst) in ("services.bank", "services.generator")
        and unit_of(src) != unit_of(dst)
    ]
    assert not bad, f"services import each other: {bad}"


def test_shared_imports_neither_torch_nor_services_nor_training() -> None:
    bad = []
    for path in (ROOT / "shared").rglob("*.py"):
        for name in imports_of(path):
            if name.split(".")[0] in ("torch", "torchvision", "timm", "services", "training"):
                bad.append(f"{module_name(path)} imports {name}")
    assert not bad, bad


def test_the_checker_sees_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
