"""How a candidate is judged: the score at the base of its reward, from one forward pass over the
scoring set.

- ``accuracy``  top-1 on the scoring set (the paper's reward);
- ``kl``        label-free: minus the mean KL divergence from the current (unpruned-this-step)
                model's predictions to the candidate's, so a candidate that changes the model's
                behaviour least scores highest.

`benchmarks/judges.py` measures how well each judge predicts accuracy after recovery; the default
follows that study (docs/benchmarks.md). A new judge is one class added to `JUDGES`.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ..registry import Registry


class Judge:
    name = ""
    needs_reference = False   # scores relative to the current model's outputs

    def score(self, logits: Sequence[torch.Tensor], labels: Sequence[torch.Tensor],
              reference: Sequence[torch.Tensor] | None) -> float:
        raise NotImplementedError


def top1(logits: Sequence[torch.Tensor], labels: Sequence[torch.Tensor]) -> float:
    correct = sum(int((out.argmax(1) == y).sum()) for out, y in zip(logits, labels))
    return correct / max(1, sum(len(y) for y in labels))


class Accuracy(Judge):
    name = "accuracy"

    def score(self, logits, labels, reference) -> float:
        return top1(logits, labels)


class KLToCurrent(Judge):
    name, needs_reference = "kl", True

    def score(self, logits, labels, reference) -> float:
        total = sum(float(F.kl_div(F.log_softmax(out.float(), 1), F.log_softmax(ref.float(), 1),
                                   reduction="sum", log_target=True)) for out, ref in zip(logits, reference))
        return -total / max(1, sum(len(out) for out in logits))


JUDGES: Registry[Judge] = Registry("judge")
for _judge in (Accuracy(), KLToCurrent()):
    JUDGES.add(_judge.name, _judge)
