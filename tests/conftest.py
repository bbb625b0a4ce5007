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
