"""Ctrl-C and SIGTERM during a compression run: stop at the next safe point, never mid-write.

The first signal is noted and logged; the loop stops after the step in progress is checkpointed
(`Interrupted`, exit status 130 in the CLI). A second signal stops at once (KeyboardInterrupt):
every file is written atomically, so the last checkpoint stays intact. Handlers are installed only
in the main thread, and the caller's handlers are restored afterwards.
"""
from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

SIGNALS = (signal.SIGINT, signal.SIGTERM)


@dataclass
class StopRequest:
    requested: str | None = None    # the name of the first signal received
    at_once: bool = False           # no safe point ahead: the first signal stops at once


@contextlib.contextmanager
def stop_signals(log: Callable[[str], None]) -> Iterator[StopRequest]:
    stop = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handler(signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if stop.requested or stop.at_once:
            stop.requested = stop.requested or name
            raise KeyboardInterrupt
        stop.requested = name
        log(f"{name} received: stopping once the current step is checkpointed (again to stop at once; the last "
            "checkpoint stays intact)")

    previous = {s: signal.signal(s, handler) for s in SIGNALS}
    try:
        yield stop
    finally:
        for s, old in previous.items():
            signal.signal(s, old)
