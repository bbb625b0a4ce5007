"""One run per output directory: an advisory lock held for the run's lifetime.

The lock is `fcntl.flock` on `<dir>/.lock`: the operating system releases it when the holding
process ends in any way (kill -9 included), so a crashed run never leaves it stuck. Where `fcntl`
does not exist (Windows) no lock is taken.
"""
from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from pathlib import Path

from ..errors import ConfigError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]


@contextlib.contextmanager
def directory_lock(directory: Path, what: str) -> Iterator[None]:
    """Hold `directory`'s lock inside the block; ConfigError at once when a live process holds it."""
    if fcntl is None:  # pragma: no cover
        yield
        return
    directory.mkdir(parents=True, exist_ok=True)
    handle = open(directory / ".lock", "a+")  # noqa: SIM115 - held open for the block's lifetime
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise ConfigError(f"{directory} is in use by another {what} ({holder}); wait for it to finish or "
                              "choose another output directory") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        handle.flush()
        yield
    finally:
        handle.close()  # closing releases the lock
