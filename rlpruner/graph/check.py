"""Does a pruned model still run, and if not, where does it break?

`forward_failure` runs the model once, on a meta-device twin first (shapes only, near free) and for
real only when the twin cannot run (code that reads tensor values). A failure names the innermost
operation that raised, the module running it and the error (usually a shape): what a user needs to
find the hard-coded channel count behind it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from ..errors import PruningError
from .context import op_name
from .rules import rule_table
from .trace import module_stack_hooks, shortcut, split_inputs, to_meta
from .twin import meta_twin


@dataclass(frozen=True)
class ForwardFailure:
    op: str       # the innermost operation that raised, e.g. "aten.reshape"
    module: str   # the module whose forward ran it ('' for the model's own forward)
    error: str    # "RuntimeError: shape '[1, 784, 24]' is invalid for input of size 37632"

    def __str__(self) -> str:
        return f"{self.op} in {self.module or '<model>'} ({self.error})"


class _Locate(TorchFunctionMode):
    """Remembers the innermost op that raised; on meta tensors, builds shape-only outputs quickly."""

    def __init__(self, on_meta: bool):
        super().__init__()
        self.rules = rule_table() if on_meta else None
        self.failed: str | None = None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        try:
            out = shortcut(self.rules, func, args, kwargs) if self.rules is not None else None
            return func(*args, **kwargs) if out is None else out
        except Exception:
            if self.failed is None:
                self.failed = op_name(func)
            raise


def _run(model: nn.Module, inputs: Any, on_meta: bool) -> ForwardFailure | None:
    args, kwargs = split_inputs(inputs)
    stack: list[str] = []
    hooks = module_stack_hooks(model, stack)
    locate = _Locate(on_meta)
    was = model.training
    model.eval()
    try:
        with torch.no_grad(), locate:
            model(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - any error means the pruned model does not run
        return ForwardFailure(locate.failed or "the model's forward", stack[-1] if stack else "",
                              f"{type(exc).__name__}: {exc}")
    finally:
        for h in hooks:
            h.remove()
        model.train(was)
    return None


def forward_failure(model: nn.Module, example_inputs: Any) -> ForwardFailure | None:
    """None when `model` runs on `example_inputs`; otherwise where and how it breaks."""
    if _run(meta_twin(model), to_meta(example_inputs), on_meta=True) is None:
        return None
    return _run(model, example_inputs, on_meta=False)  # decide with a real run


def validate_forward(model: nn.Module, example_inputs: Any) -> None:
    """PruningError naming the op and module when the pruned model no longer runs."""
    failure = forward_failure(model, example_inputs)
    if failure is not None:
        raise PruningError(
            f"the pruned model no longer runs: {failure}. The model probably hard-codes a channel count "
            "(e.g. in a view/reshape); keep the layers involved with keep=[...]")
