"""The host allocator's share of a CPU latency, held fixed so that latencies compare.

glibc's malloc (the default on Linux) returns large freed blocks to the system and adapts the size
above which it does so to what the process has done before. A model whose activations are several
megabytes then pays page faults on every forward pass in one process and none in another: on the
2-core reference VM, MobileNetV2 at 224x224, batch 1, 1 thread took 21 ms (2,300 page faults per
call) in a fresh process and 17 ms (none) in one that had first run a batch of 32, while a pruned
version of it took 10.3-10.5 ms in both (`python benchmarks/host_memory.py`). A base and a pruned
model timed in different allocator states, or a latency table built in one state and checked in
another, compare page faults, not models.

`keep_freed_memory()` sets glibc's two thresholds (mmap at glibc's maximum, trim high) to fixed
values, so that after the warm-up calls no forward pass returns memory to the system or faults it
back: the state a server process reaches with jemalloc or tcmalloc, and the one that shows the
model's own cost. `metrics.time_calls`, the one timing loop, calls it before every CPU timing. It
changes the process: freed memory below the trim threshold stays with the process until it exits.
On other C libraries (macOS, Windows, musl) it does nothing and `describe()` says so; every
runtime's key, and so every latency table, records the state it was timed in.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import platform
from functools import cache

M_TRIM_THRESHOLD = -1   # glibc's mallopt parameters (malloc.h)
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 1024 * 1024      # the largest glibc accepts on 64-bit systems
TRIM_THRESHOLD = 1024 * 1024 * 1024


@cache
def _mallopt() -> ctypes._CFuncPtr | None:
    """glibc's `mallopt`, or None where the C library is not glibc."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        function = libc.mallopt
    except (OSError, AttributeError):
        return None
    function.argtypes, function.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return function


def keep_freed_memory() -> bool:
    """Fix glibc's mmap and trim thresholds (see the module); True where it took effect. Idempotent
    and cheap, so every timing calls it."""
    mallopt = _mallopt()
    if mallopt is None:
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))


def describe() -> str:
    """The allocator state CPU timings run in (part of a latency table's key)."""
    if _mallopt() is None:
        return "the C library's default allocator"
    return f"glibc malloc keeping freed memory (mmap threshold {MMAP_THRESHOLD >> 20} MiB, " \
           f"trim threshold {TRIM_THRESHOLD >> 20} MiB)"
