"""Mixed precision and memory format: how a run computes on its device.

    precision = Precision.resolve("auto", None, torch.device("cuda"))   # bf16 autocast + channels_last
    task = precision.apply(task)                                        # every forward goes through it

`amp="auto"` (the default) is bf16 autocast on a CUDA device that supports it, fp16 autocast with a
gradient scaler on an older one, and off elsewhere (CPU runs stay bit-identical to full precision).
`channels_last=None` is on for CUDA. Weights stay float32 (autocast casts per op), so saving,
checkpoints and surgery see the same tensors as without it.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from .errors import ConfigError

AMP_MODES = ("auto", "off", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Precision:
    device_type: str = "cpu"
    dtype: torch.dtype | None = None     # the autocast dtype; None: full precision
    channels_last: bool = False

    @classmethod
    def resolve(cls, amp: str, channels_last: bool | None, device: torch.device) -> Precision:
        if amp not in AMP_MODES:
            raise ConfigError(f"amp must be one of {', '.join(AMP_MODES)}, got {amp!r}")
        cuda = device.type == "cuda"
        if amp == "auto":
            amp = ("bf16" if torch.cuda.is_bf16_supported() else "fp16") if cuda else "off"
        if amp == "fp16" and not cuda:
            raise ConfigError(f"amp=fp16 needs a CUDA device (got {device}); use bf16 or off")
        return cls(device_type=device.type, dtype=_DTYPES.get(amp),
                   channels_last=cuda if channels_last is None else channels_last)

    @property
    def active(self) -> bool:
        return self.dtype is not None or self.channels_last

    @property
    def name(self) -> str:
        amp = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(self.dtype, "off")  # type: ignore[arg-type]
        return f"amp {amp}, {'channels_last' if self.channels_last else 'contiguous'}"

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def scaler(self) -> torch.amp.GradScaler | None:
        """A gradient scaler for fp16 training (bf16 and fp32 need none)."""
        return torch.amp.GradScaler(self.device_type) if self.dtype == torch.float16 else None

    def prepare(self, model: nn.Module) -> nn.Module:
        """`model` in the memory format (in place; a no-op when it already is)."""
        if self.channels_last and not _is_channels_last(model):
            model.to(memory_format=torch.channels_last)
        return model

    def apply(self, task: Any) -> Any:
        """`task` (rlpruner.task.Task) whose forward runs under this precision: every forward of the
        search, the scoring, recovery and the evaluations goes through it."""
        if not self.active:
            return task
        inner = task.forward

        def forward(model: nn.Module, batch: Any) -> Any:
            self.prepare(model)
            with self.autocast():
                return _float_outputs(inner(model, batch))

        forward.__name__ = getattr(inner, "__name__", "forward")
        return replace(task, forward=forward)


def _is_channels_last(model: nn.Module) -> bool:
    for p in model.parameters():
        if p.dim() == 4:
            return p.is_contiguous(memory_format=torch.channels_last)
    return True  # no 4-d weight: nothing to convert


def _float_outputs(value: Any) -> Any:
    """Low-precision floating outputs back to float32, so metrics, losses and distillation compute
    in full precision."""
    if isinstance(value, torch.Tensor):
        return value.float() if value.is_floating_point() and value.dtype != torch.float32 else value
    if isinstance(value, dict):
        return {k: _float_outputs(v) for k, v in value.items()}
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        return type(value)(*(_float_outputs(v) for v in value))
    if isinstance(value, (list, tuple)):
        return type(value)(_float_outputs(v) for v in value)
    return value
