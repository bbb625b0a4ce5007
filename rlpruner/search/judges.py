"""How a candidate is judged: the score at the base of its reward, from one forward pass over the
scoring set.

- ``accuracy``  the task's metric on the scoring set (top-1 for classifiers: the paper's reward);
- ``kl``        label-free: minus the mean distance from the current (unpruned-this-step) model's
                outputs to the candidate's — the KL divergence of the predictions for class scores,
                the output distillation's distance otherwise — so a candidate that changes the
                model's behaviour least scores highest.

`benchmarks/judges.py` measures how well each judge predicts accuracy after recovery; the default
follows that study (docs/benchmarks.md). A new judge is one class added to `JUDGES`.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..batches import batch_len
from ..distill import OutputKD
from ..registry import Registry


class Judge:
    name = ""
    needs_reference = False   # scores relative to the current model's outputs

    def score(self, metric: float, outputs: Sequence[Any] | None, reference: Sequence[Any] | None,
              distiller: OutputKD) -> float:
        """The candidate's score from its metric on the scoring set and, for judges that need them,
        its outputs and the current model's (`distiller` measures how far apart they are)."""
        raise NotImplementedError


class Accuracy(Judge):
    name = "accuracy"

    def score(self, metric, outputs, reference, distiller) -> float:
        return metric


class KLToCurrent(Judge):
    name, needs_reference = "kl", True

    def score(self, metric, outputs, reference, distiller) -> float:
        total = sum(distiller.distance(out, ref) for out, ref in zip(outputs, reference))
        return -total / max(1, sum(batch_len(out) for out in outputs))


JUDGES: Registry[Judge] = Registry("judge")
for _judge in (Accuracy(), KLToCurrent()):
    JUDGES.add(_judge.name, _judge)
