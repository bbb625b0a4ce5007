"""One registry type for every "pick a thing by name" in rlpruner: models, datasets, importance
criteria, allocation strategies. An unknown name gets one message with the closest names first.

    CRITERIA = Registry("importance criterion")

    @CRITERIA.register("l1")
    def l1(...): ...

    CRITERIA.get("l2")   # -> UnknownNameError: unknown importance criterion 'l2'; valid names (closest first): l1

Registries are filled at import time by the modules that define the entries; users add their own
with `register`/`add` the same way (no editing of the package).
"""
from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from .errors import ConfigError, UnknownNameError

T = TypeVar("T")


def unknown_name_message(kind: str, name: object, valid: list[str]) -> str:
    """``unknown <kind> 'x'; valid names (closest first): ...`` with difflib's close matches first."""
    close = difflib.get_close_matches(str(name), valid, n=5, cutoff=0.4)
    ordered = close + [v for v in valid if v not in close]
    return f"unknown {kind} {name!r}; valid names (closest first): {', '.join(ordered)}"


class Registry(Generic[T]):
    """Name -> entry. `kind` names what is registered, for messages ("model", "dataset", ...)."""

    def __init__(self, kind: str, *, hint: str = "") -> None:
        self.kind = kind
        self._hint = hint  # appended to the unknown-name message, e.g. "or give an import path"
        self._entries: dict[str, T] = {}

    def add(self, name: str, entry: T) -> T:
        if not isinstance(name, str) or not name or ":" in name:
            # ':' marks an import path wherever names are accepted, so a registered name never has one
            raise ConfigError(f"invalid {self.kind} name {name!r}: use a non-empty name without ':'")
        if name in self._entries:
            raise ConfigError(f"{self.kind} name {name!r} is already registered "
                              f"(by {_qualname(self._entries[name])})")
        self.check(name, entry)
        self._entries[name] = entry
        return entry

    def check(self, name: str, entry: T) -> None:
        """Refuse an entry unfit for this registry (ConfigError); subclasses override it."""

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator form of `add`; returns the entry unchanged."""
        return lambda entry: self.add(name, entry)

    def get(self, name: str) -> T:
        if name not in self._entries:
            raise UnknownNameError(unknown_name_message(self.kind, name, self.names()) + self._hint)
        return self._entries[name]

    def remove(self, name: str) -> T:
        """Take an entry out again (e.g. a user registration scoped to a test)."""
        self.get(name)  # the unknown-name message if it is not there
        return self._entries.pop(name)

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)


def _qualname(entry: object) -> str:
    return f"{getattr(entry, '__module__', '?')}.{getattr(entry, '__qualname__', type(entry).__name__)}"
