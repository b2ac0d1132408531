"""Optimiser (AdamW; separate learning rates for the heads and, LoRA+, the adapters'
up-projections) and learning-rate schedule of a recipe.
"""

from __future__ import annotations

import math

import torch

from cft.errors import CftError
from cft.nn.adapters import AdapterBank
from cft.nn.model import CftModel
from cft.recipe.schema import Recipe
from cft.spec import HIGHER_IS_BETTER


def make_optimizer(model: CftModel, recipe: Recipe) -> torch.optim.Optimizer:
    """AdamW over up to three parameter groups: the task heads at `head_lr` (default `lr`), the
    adapters' up-projections V at `up_lr_ratio * lr` (LoRA+), everything else trainable at `lr`."""
    tr = recipe.train
    head = _trainable(model.head.parameters())
    # at ratio 1 V stays in `rest`: the same two groups as before the option, so checkpoints written
    # then still resume (an optimiser's state is loaded group by group)
    up = _trainable(bank.V for bank in model.modules() if isinstance(bank, AdapterBank)) if tr.up_lr_ratio != 1 else []
    taken = {id(p) for p in head + up}
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in taken]
    groups = [{"params": rest, "lr": tr.lr}, {"params": up, "lr": tr.lr * tr.up_lr_ratio}, {"params": head, "lr": tr.head_lr or tr.lr}]
    groups = [g for g in groups if g["params"]]
    if not groups and tr.trainable == "routing":
        raise CftError("Nothing to train: train.trainable is routing, and the model has no router (one adapter per layer, "
                       "or uniform routes: its routes are fixed).", hint="Set train.trainable: all, or start from a bundle with routed adapters.")
    if not groups:
        raise CftError("Nothing to train: every parameter is frozen.", hint="Enable adapters, unfreeze the backbone, or train the heads.")
    return torch.optim.AdamW(groups, weight_decay=tr.weight_decay, fused=fused_adamw(groups))


FUSED_DEVICES = ("cpu", "cuda")
"""Devices on which torch's AdamW has a fused kernel that cft uses."""


def fused_adamw(groups: list[dict]) -> bool:
    """Whether AdamW runs fused (one kernel over every parameter per step instead of about ten
    operators per tensor): every parameter on one device type that has the kernel (trainable
    parameters are floating point).
    On 2 CPU cores the Tox21 recipe's 40 trainable tensors took 0.44 ms a step fused, 2.06 ms in
    torch's default per-tensor loop (benchmarks/optimizer_step.py at 31c1db6, an AMD EPYC); on a GPU it is launches saved."""
    device_types = {p.device.type for g in groups for p in g["params"]}
    return len(device_types) == 1 and device_types <= set(FUSED_DEVICES)


def _trainable(parameters) -> list[torch.nn.Parameter]:
    return [p for p in parameters if p.requires_grad]


def make_scheduler(optimizer, recipe: Recipe, steps_per_epoch: int):
    tr = recipe.train
    if tr.scheduler == "plateau":
        higher = HIGHER_IS_BETTER.get(recipe.eval.metric if recipe.eval.metric != "auto" else "rocauc", True)
        mode = "max" if higher and tr.select_on == "metric" else "min"  # the loss: lower is better
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode=mode, factor=0.5, patience=3)
    warmup = tr.warmup_epochs * steps_per_epoch
    total = max(tr.epochs * steps_per_epoch, 1)
    if tr.max_steps:
        total = min(total, tr.max_steps)

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if tr.scheduler == "constant":
            return 1.0
        progress = min((step - warmup) / max(total - warmup, 1), 1.0)
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
