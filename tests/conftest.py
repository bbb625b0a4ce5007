"""Shared test settings (small tensors run fastest, and least noisily, on one thread) and the tiny
trained classifier the end-to-end compression tests share."""
import os

import pytest
import torch

torch.set_num_threads(int(os.environ.get("RLPRUNER_TEST_THREADS", "1")))

if os.environ.get("RLPRUNER_ERROR_LOG"):  # scripts/error_table.py: record the user errors the tests check
    from error_log import install

    install(os.environ["RLPRUNER_ERROR_LOG"])


@pytest.fixture(scope="session")
def tiny_splits():
    from rlpruner.data import get_dataset

    return get_dataset("synthetic", image_size=8, in_channels=1, num_classes=3, samples_per_class=40,
                       val_fraction=0.2)


@pytest.fixture(scope="session")
def tiny_trained(tiny_splits):
    """A 3-class simple_cnn trained for 4 epochs on `tiny_splits` (a fresh copy per test module is
    the caller's job if it trains it further; compress never modifies its input)."""
    from rlpruner.models import create_model
    from rlpruner.train import TrainConfig, train

    torch.manual_seed(0)
    model = create_model("simple_cnn", num_classes=3, in_channels=1, widths=[8, 16])
    with torch.random.fork_rng():
        torch.set_num_threads(1)
        train(model, tiny_splits, TrainConfig(epochs=4, lr=0.05, batch_size=16))
    return model


STAND_INS = os.path.join(os.path.dirname(__file__), "stand_ins")


def torchvision_importable() -> bool:
    """True when a real torchvision imports here (it has no CPU build on our CI machines)."""
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-c", "import torchvision"], capture_output=True).returncode == 0


@pytest.fixture(scope="session")
def library_path():
    """PYTHONPATH entries that make `torchvision` importable: none when the real one imports, else
    tests/stand_ins (see its README). Also applied to this process, for in-process tests."""
    import sys

    if torchvision_importable():
        return []
    if STAND_INS not in sys.path:
        sys.path.insert(0, STAND_INS)
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]  # a half-imported real torchvision
    return [STAND_INS]
