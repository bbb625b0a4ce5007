"""Which saved architectures may be built: zoo and library names always, an import path only when the
caller allows it (importing a module runs its code; docs/saving.md)."""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from ..errors import CheckpointError


def import_allowed(name: str, allow_imports: Iterable[str]) -> bool:
    """True when `allow_imports` has `name` itself or a dotted module prefix of its module part."""
    module = name.split(":", 1)[0]
    for entry in allow_imports:
        if entry == name:
            return True
        if ":" not in entry and (module == entry or module.startswith(entry + ".")):
            return True
    return False


def check_allowed(spec: dict, allow_imports: tuple[str, ...], path: Path) -> None:
    if spec["source"] == "import" and not import_allowed(spec["name"], allow_imports):
        module = spec["name"].split(":", 1)[0]
        raise CheckpointError(
            f"{path}: the model is built by the import path {spec['name']!r}, which is not allowed; "
            f"importing it would run its code. If you trust it, pass "
            f"allow_imports=[{module!r}] (CLI: --allow-import {module})")
