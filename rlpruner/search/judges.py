"""How a candidate is judged: the score at the base of its reward, from one forward pass over the
scoring set.

- ``accuracy``  the task's metric on the scoring set (top-1 for classifiers: the paper's reward);
- ``loss``      minus the task's loss on the scoring set (cross-entropy for classifiers): a continuous
                score, so candidates that top-1 on a few hundred images calls equal still differ;
- ``kl``        label-free: minus the mean distance from the current (unpruned-this-step) model's
                outputs to the candidate's — the KL divergence of the predictions for class scores,
                the output distillation's distance otherwise — so a candidate that changes the
                model's behaviour least scores highest.

`benchmarks/judges.py` measures how well each judge predicts accuracy after recovery; the default
follows that study (docs/benchmarks.md). A new judge is one class added to `JUDGES`.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..batches import Batch, batch_len
from ..distill import OutputKD
from ..registry import Registry
from ..task import Task


@dataclass(frozen=True)
class Evidence:
    """What a judge may read about one candidate: its metric on the scoring set; its outputs there
    (present when the judge `needs_outputs`) and the current model's (when it `needs_reference`)."""

    metric: float
    outputs: Sequence[Any] | None = None
    reference: Sequence[Any] | None = None
    batches: Sequence[Batch] = ()
    task: Task | None = None
    distiller: OutputKD | None = None


class Judge:
    name = ""
    needs_reference = False   # scores relative to the current model's outputs
    needs_outputs = False     # reads the candidate's outputs on the scoring set

    def score(self, evidence: Evidence) -> float:
        """The candidate's score: higher is better."""
        raise NotImplementedError


class Accuracy(Judge):
    name = "accuracy"

    def score(self, evidence: Evidence) -> float:
        return evidence.metric


class Loss(Judge):
    name, needs_outputs = "loss", True

    def score(self, evidence: Evidence) -> float:
        assert evidence.outputs is not None and evidence.task is not None
        total, seen = 0.0, 0
        with torch.no_grad():
            for out, batch in zip(evidence.outputs, evidence.batches):
                n = batch_len(out)
                total += float(evidence.task.batch_loss(out, batch, "the loss judge")) * n
                seen += n
        return -total / max(1, seen)


class KLToCurrent(Judge):
    name, needs_reference, needs_outputs = "kl", True, True

    def score(self, evidence: Evidence) -> float:
        assert evidence.outputs is not None and evidence.reference is not None and evidence.distiller is not None
        total = sum(evidence.distiller.distance(out, ref) for out, ref in zip(evidence.outputs, evidence.reference))
        return -total / max(1, sum(batch_len(out) for out in evidence.outputs))


JUDGES: Registry[Judge] = Registry("judge")
for _judge in (Accuracy(), Loss(), KLToCurrent()):
    JUDGES.add(_judge.name, _judge)
