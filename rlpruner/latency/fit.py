"""The rest term of a latency table: what its layers timed alone do not cover, fitted on timed whole
models (`fit_rest`), and the fitted coefficients (`Fit`). See rlpruner.latency.table."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

Shapes = Mapping[str, Sequence[int]]  # weight name -> shape, of a (pruned) model


class Features(Protocol):
    """What the fit reads of a latency table (rlpruner.latency.table.LatencyTable)."""

    def kinds(self) -> list[str]: ...

    def features(self, shapes: Shapes, kinds: Sequence[str | tuple[str, ...]], block: int) -> list[float]: ...


MISALIGNED_BLOCKS = (4, 8, 16)  # channel blocks a runtime's layout may need (fp32 SIMD widths)
FORM_TOLERANCE = 0.0025         # a form with more terms must predict better than this (relative error)


@dataclass(frozen=True)
class Fit:
    """latency = sum over op kinds of scale[kind] * their latencies + constant_ms + per_element_ms *
    relative elements + misaligned_ms * relative elements of layers whose width is off `block`.
    Kinds (dense conv, grouped conv, linear) get their own scale where that predicts better than one
    scale (a runtime may fuse and lay out each differently inside a whole model than alone)."""

    scales: dict[str, float]
    constant_ms: float
    per_element_ms: float
    misaligned_ms: float = 0.0
    block: int = 1                  # 1: no misalignment term
    cv_error: float | None = None   # median relative error on each calibration model left out of the fit

    def describe(self) -> str:
        scales = ", ".join(f"{kind} x{scale:.3g}" for kind, scale in self.scales.items())
        text = f"{scales}; constant {self.constant_ms:.3g} ms; {self.per_element_ms:.3g} ms x relative output elements"
        if self.block > 1:
            text += f"; {self.misaligned_ms:.3g} ms x relative output elements of widths off multiples of {self.block}"
        if self.cv_error is not None:
            text += f" (leave-one-out error {self.cv_error:.1%})"
        return text


def fit_rest(table_ops: Features, shapes: Sequence[Shapes], measured: Sequence[float]) -> Fit:
    """The rest term fitted on whole-model measurements: for each form (one scale for all op kinds
    or one per kind; no misalignment term or one per block of `MISALIGNED_BLOCKS`), non-negative
    least squares in relative error. The simplest form whose median error on each model left out of
    its fit is within `FORM_TOLERANCE` of the lowest wins, refitted on every model."""
    kinds = table_ops.kinds()
    y = np.asarray(measured, dtype=float)
    forms = [(shared, block) for block in (1, *MISALIGNED_BLOCKS) for shared in (True, False)
             if not (shared is False and len(kinds) == 1)]
    scored = []
    for shared, block in forms:
        groups: list[str | tuple[str, ...]] = [tuple(kinds)] if shared else list(kinds)
        rows = np.array([table_ops.features(s, groups, block) for s in shapes])
        scored.append((_leave_one_out(rows, y), shared, block, groups, rows))
    lowest = min(entry[0] for entry in scored)
    cv_error, shared, block, groups, rows = next(entry for entry in scored if entry[0] <= lowest + FORM_TOLERANCE)
    coef = _relative_nnls(rows, y)
    scales = {k: float(coef[0]) for k in kinds} if shared else {k: float(c) for k, c in zip(kinds, coef)}
    rest = coef[len(groups):]
    return Fit(scales=scales, constant_ms=float(rest[0]), per_element_ms=float(rest[1]),
               misaligned_ms=float(rest[2]) if block > 1 else 0.0, block=block,
               cv_error=None if np.isinf(cv_error) else float(cv_error))


def _relative_nnls(rows: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Non-negative coefficients minimising the squared relative error of rows @ coef against y."""
    from scipy.optimize import nnls

    weights = 1.0 / np.maximum(y, 1e-9)
    return nnls(rows * weights[:, None], y * weights)[0]


def _leave_one_out(rows: np.ndarray, y: np.ndarray) -> float:
    """Median relative error of each measurement predicted by the fit on the others (inf when there
    are too few measurements for the form's coefficients)."""
    if len(y) < rows.shape[1] + 2:
        return float("inf")
    errors = []
    for i in range(len(y)):
        rest = np.arange(len(y)) != i
        errors.append(abs(float(rows[i] @ _relative_nnls(rows[rest], y[rest])) - y[i]) / max(y[i], 1e-9))
    return float(np.median(errors))
