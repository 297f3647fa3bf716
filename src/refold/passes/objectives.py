"""The loss passes differentiate when they need a gradient and the user gave no loss: HAWQ-V2's
Hessian traces, Taylor importance for pruning; and how a batch carries its labels."""
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


def split_labels(batch, n_inputs: int):
    """(feeds, labels or None): a batch with one item more than the model has inputs, such as a
    DataLoader's (x, label), carries its labels last."""
    if isinstance(batch, (tuple, list)) and len(batch) == n_inputs + 1:
        import numpy as np
        import torch

        return tuple(batch[:-1]), torch.as_tensor(np.asarray(batch[-1]) if not hasattr(batch[-1], "detach")
                                                  else batch[-1])
    return batch, None
