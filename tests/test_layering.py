"""The engine's modules import each other in one direction only (no import cycles)."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import rlpruner

ROOT = Path(rlpruner.__file__).parent
ENGINE = sorted([*ROOT.joinpath("graph").rglob("*.py"), ROOT / "surgery.py"])


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every rlpruner module `path` imports, at any level (function-local imports included)."""
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
            found.add(target)
            found |= {f"{target}.{a.name}" for a in node.names}  # `from . import rules`
    return {m for m in found if m.startswith("rlpruner")}


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
