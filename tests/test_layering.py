"""rlpruner's modules import each other in one direction only (no import cycles), and the layout
keeps modules small enough to read."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import rlpruner

ROOT = Path(rlpruner.__file__).parent
ENGINE = sorted([*ROOT.joinpath("graph").rglob("*.py"), ROOT / "surgery.py"])
EVERYTHING = sorted(ROOT.rglob("*.py"))


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: frozenset[str] = frozenset()) -> set[str]:
    """Every rlpruner module `path` imports, at any level (function-local imports included).
    `from package import name` counts as importing the submodule `package.name` when that is one
    of `modules` (a child importing its sibling is not a cycle through the package)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")
            base = base[: len(base) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            submodules = {f"{target}.{a.name}" for a in node.names}
            if modules and submodules <= modules:
                found |= submodules
            else:
                found.add(target)
                found |= submodules  # `from . import rules`
    return {m for m in found if m.startswith("rlpruner")}


def _cycle(modules: dict[str, Path], edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> list[str] | None:
        state[m] = 1
        for n in sorted(edges[m]):
            if state.get(n) == 1:
                return path + [m, n]
            if n not in state and (found := visit(n, path + [m])):
                return found
        state[m] = 2
        return None

    for m in sorted(modules):
        if m not in state and (found := visit(m, [])):
            return found
    return None


def test_no_import_cycles_in_the_graph_package_and_surgery():
    modules = {_module_name(p): p for p in ENGINE}
    edges = {m: {i for i in _imports(p) if i in modules and i != m} for m, p in modules.items()}
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for n in sorted(edges[m]):
            assert state.get(n) != 1, "import cycle: " + " -> ".join(path + [m, n])
            if n not in state:
                visit(n, path + [m])
        state[m] = 2

    for m in sorted(modules):
        if m not in state:
            visit(m, [])
    assert "rlpruner.graph.trace" not in edges["rlpruner.graph.rules"]
    assert "rlpruner.graph.rules" not in edges["rlpruner.graph.context"]


def test_each_engine_module_imports_first_in_a_fresh_interpreter():
    """A cycle shows as an ImportError depending on which module of it is imported first."""
    names = ["rlpruner.graph.context", "rlpruner.graph.rules", "rlpruner.graph.trace", "rlpruner.graph.groups",
             "rlpruner.surgery"]
    for first in names:
        script = "; ".join(f"import {n}" for n in [first, *(n for n in names if n != first)])
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-2000:]


def test_no_import_cycles_anywhere_in_the_package():
    modules = {_module_name(p): p for p in EVERYTHING}
    known = frozenset(modules)

    def owner(name: str) -> str:  # `from x.y import function` -> the module x.y
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name

    edges = {m: {owner(i) for i in _imports(p, known)} - {m, ""} for m, p in modules.items()}
    cycle = _cycle(modules, edges)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_module_is_longer_than_an_afternoon_read():
    long = {str(p.relative_to(ROOT)): n for p in EVERYTHING if (n := len(p.read_text().splitlines())) > 400}
    assert not long, f"modules over 400 lines: {long}"
