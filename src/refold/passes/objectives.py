"""The loss passes differentiate when they need a gradient and the user gave no loss: HAWQ-V2's
Hessian traces, Taylor importance for pruning."""
from __future__ import annotations


def task_loss(out, target, labelled: bool):
    """The task loss with labels; else cross-entropy against the float model's own arg-max, or
    squared error for outputs that are not logits."""
    import torch

    if labelled:
        return torch.nn.functional.cross_entropy(out.reshape(-1, out.shape[-1]).float(), target.reshape(-1).long())
    if out.dim() >= 2 and out.shape[-1] > 1:
        return torch.nn.functional.cross_entropy(out.reshape(-1, out.shape[-1]).float(),
                                                 target.reshape(-1, target.shape[-1]).argmax(-1))
    return ((out - target) ** 2).mean()
