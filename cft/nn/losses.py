"""The multi-task loss: binary cross-entropy and squared error, masked to labelled entries.

One definition shared by adapter training (`nn.model.CftModel.task_loss`) and supervised
backbone pretraining (`training.pretrain`), so the two objectives cannot drift apart.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def masked_multitask_loss(logits: torch.Tensor, y: torch.Tensor, is_binary: torch.Tensor) -> torch.Tensor:
    r"""Mean per-entry loss over the labelled entries of a multi-task batch.

    .. math::
        \mathcal{L} = \frac{1}{|\Omega|} \sum_{(i,t) \in \Omega}
        \begin{cases} \mathrm{BCE}(z_{it}, y_{it}) & t \text{ binary} \\ (z_{it} - y_{it})^2 & \text{otherwise} \end{cases}

    where :math:`\Omega` is the set of labelled (non-NaN) entries.

    Args:
        logits: ``[B, T]`` raw scores.
        y: ``[B, T]`` targets, NaN where a molecule has no label for a task.
        is_binary: ``[T]`` bool, True for classification tasks.

    Returns:
        A scalar; ``0 * logits.sum()`` (still attached to the graph) when nothing is labelled.
    """
    labelled = ~torch.isnan(y)
    if not labelled.any():
        return logits.sum() * 0.0
    target = torch.nan_to_num(y, nan=0.0)
    binary = is_binary.view(1, -1).expand_as(y)
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    mse = (logits - target) ** 2
    weight = labelled.to(logits.dtype)  # a multiply, not a boolean gather: cheap with 600+ tasks
    return (torch.where(binary, bce, mse) * weight).sum() / weight.sum()
