"""Shared test settings: small tensors run fastest (and least noisily) on one thread."""
import os

import torch

torch.set_num_threads(int(os.environ.get("RLPRUNER_TEST_THREADS", "1")))
