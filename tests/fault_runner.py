"""A tiny compression run, killed with SIGKILL at the Nth occurrence of one event (tests/test_faults.py).

    python tests/fault_runner.py MODEL OUT_DIR EVENT N [--resume] [--count FILE]

EVENT: 'write' (a file fully written to its temporary name, not yet renamed over the target: a kill
in the middle of an atomic write), 'renamed' (just after a rename), 'batch' (a training batch of a
recovery or of the final fine-tune), 'candidate' (a candidate being scored). N = 0 never kills;
--count writes how many times each event happened, as JSON. With --signal the Nth event sends the
process SIGINT (SIGTERM with --sigterm) instead (--signal twice: two signals, the second while the
first is pending); the
process then exits like the CLI: the error's exit status (130 for an interrupt) and its message.
"""
from __future__ import annotations

import json
import os
import signal
import sys
from collections import Counter

import torch

from rlpruner import io
from rlpruner.data import get_dataset
from rlpruner.distill import DistillConfig
from rlpruner.errors import RLPrunerError
from rlpruner.io import atomic
from rlpruner.search import CompressConfig, RLConfig, Target, compress
from rlpruner.search import step as step_module
import rlpruner.train as train_module

CONFIG = CompressConfig(target=Target("flops", 0.4), rl=RLConfig(prune_filter_ratio=0.1, lr_epoch=2, sample_num=2,
                                                                 score_samples=8),
                        kd=DistillConfig(epochs=1, batch_size=16, lr=0.05), final_epochs=1, latency_repeats=1,
                        latency_warmup=0, progress=False)


def data():
    return get_dataset("synthetic", image_size=8, in_channels=1, num_classes=3, samples_per_class=30,
                       val_fraction=0.2)


def main(argv: list[str]) -> None:
    model_path, out_dir, event, nth = argv[0], argv[1], argv[2], int(argv[3])
    counts: Counter = Counter()

    signals = argv.count("--signal")

    def tick(name: str) -> None:
        counts[name] += 1
        if name == event and counts[name] == nth:
            if not signals:
                os.kill(os.getpid(), signal.SIGKILL)
            for _ in range(signals):
                os.kill(os.getpid(), signal.SIGTERM if "--sigterm" in argv else signal.SIGINT)

    real_fsync, real_dir_sync = atomic.os.fsync, atomic._fsync_directory
    atomic.os.fsync = lambda fd: (real_fsync(fd), tick("write"))[0]
    atomic._fsync_directory = lambda path: (real_dir_sync(path), tick("renamed"))[0]
    real_to_device, real_score = train_module.to_device, step_module.score
    train_module.to_device = lambda batch, device: (tick("batch"), real_to_device(batch, device))[1]
    step_module.score = lambda *a, **k: (tick("candidate"), real_score(*a, **k))[1]

    torch.set_num_threads(1)
    resume = "--resume" in argv
    try:
        compress(io.load(model_path), data(), CONFIG, out_dir=out_dir, resume=resume, overwrite=not resume)
    except RLPrunerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(getattr(exc, "exit_code", 2))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    if "--count" in argv:
        with open(argv[argv.index("--count") + 1], "w") as handle:
            json.dump(counts, handle)


if __name__ == "__main__":
    main(sys.argv[1:])
