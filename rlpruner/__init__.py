"""rlpruner: structured pruning of any PyTorch CNN with a learned per-layer pruning distribution.

Three lines::

    import rlpruner
    small = rlpruner.prune(model, example_inputs, ratio=0.5)        # one-shot, physical
    rlpruner.save(small, "small.rlp")                               # safetensors + JSON, no pickle

The public names are imported lazily so that `import rlpruner` stays fast.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "trace": "rlpruner.graph",
    "DependencyGraph": "rlpruner.graph",
    "prune": "rlpruner.pruner",
    "prune_channels": "rlpruner.surgery",
    "create_model": "rlpruner.models",
    "list_models": "rlpruner.models",
    "count": "rlpruner.metrics",
    "measure_latency": "rlpruner.metrics",
    "compress": "rlpruner.search",
    "save": "rlpruner.io",
    "load": "rlpruner.io",
    "load_weights": "rlpruner.io",
    "export": "rlpruner.io",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'rlpruner' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
