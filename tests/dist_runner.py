"""`rlpruner` under torchrun, with a fault on one rank (tests/test_distributed.py).

    torchrun --nproc-per-node 2 tests/dist_runner.py [--kill RANK:N] -- compress ARGS...

`--kill RANK:N`: the process of rank RANK kills itself (SIGKILL) when it starts scoring its Nth
candidate, as a crashed or pre-empted worker would. Otherwise this is `python -m rlpruner ARGS`.
"""
from __future__ import annotations

import os
import signal
import sys

from rlpruner.cli import main
from rlpruner.search import step as step_module


def arm(rank: int, nth: int) -> None:
    if int(os.environ.get("RANK", "0")) != rank:
        return
    real, calls = step_module.score, [0]

    def score(*args, **kwargs):
        calls[0] += 1
        if calls[0] == nth:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(*args, **kwargs)

    step_module.score = score


if __name__ == "__main__":
    argv = sys.argv[1:]
    if argv[:1] == ["--kill"]:
        rank, nth = argv[1].split(":")
        arm(int(rank), int(nth))
        argv = argv[2:]
    if argv[:1] == ["--"]:
        argv = argv[1:]
    sys.exit(main(argv))
