"""Running a model over molecules: logits in batches and the metric of a split.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader

from cft.data.dataset import MolDataset
from cft.data.graphs import GraphDataset
from cft.metrics import score
from cft.nn.model import CftModel
from cft.training.distributed import DistContext
from cft.training.prefix import PrefixCache, StoreBatches, as_is


@torch.no_grad()
def predict_logits(
    model: CftModel, dataset: GraphDataset, batch_size: int, device: torch.device, amp: bool = False, prefix: PrefixCache | None = None
) -> np.ndarray:
    """Logits [n, T] of the dataset's molecules, in batches sliced from its compact store; `prefix`:
    the frozen-prefix cache of `model` over that store (cft.training.prefix), or None."""
    model.eval()
    if model.prefix_layer() is None:
        prefix = None
    batches = StoreBatches(dataset.store, dataset.y, dataset.indices_, batch_size, with_index=prefix is not None)
    loader = DataLoader(batches, batch_size=None, shuffle=False, collate_fn=as_is)
    outputs = []
    for batch in loader:
        states = prefix.take(batch, device) if prefix is not None else None
        batch = batch.to(device, non_blocking=True)
        with autocast(device, amp):
            outputs.append((model(batch, prefix=states) if states is not None else model(batch)).float().cpu())
    if not outputs:
        return np.zeros((0, len(model.spec.tasks)), dtype=np.float32)
    return torch.cat(outputs).numpy()


def autocast(device: torch.device, enabled: bool) -> torch.autocast:
    """bf16 autocast on CUDA when enabled; a disabled autocast (a no-op) otherwise."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled and device.type == "cuda")


def evaluate_split(
    model: CftModel, dataset: MolDataset, split: str, metric: str, batch_size: int, device: torch.device, dist: DistContext, amp: bool = False,
    prefix: PrefixCache | None = None,
) -> dict:
    indices = dataset.split[split]
    logits = predict_logits(model, GraphDataset(dataset.store, dataset.y, dist.shard(indices)), batch_size, device, amp, prefix)
    logits = dist.gather_rows(logits, len(indices), device)
    return score(metric, dataset.labels(split), logits, dataset.tasks)


@contextlib.contextmanager
def capture_representations(model: CftModel) -> Iterator[list[torch.Tensor]]:
    """While active, every forward pass of `model` appends its pooled adapted representation
    [G, B, d] (G groups: one per part of a composed bundle, 1 otherwise) to the yielded list.

    - `readout: mixture` (and head-only / full fine-tuning): the input of the task heads,
      pool(h) after the adapted layers, one per group.
    - `readout: task`: each task reads its own r_t(x) = z_0(x) + sum_k R_tk D_k(x); a molecule's
      representation per part is the part's mean over its tasks, z_0 + sum_k Rbar_k D_k with
      Rbar = the mean of the part's gate rows R_t (so a one-task part gives exactly its r_t).
    """
    captured: list[torch.Tensor] = []
    groups = model.router.num_groups if model.router.layers else 1

    def head_input(_module, args):
        pooled = args[0].detach().float()
        captured.append(pooled.reshape(groups, -1, pooled.size(-1)))

    original = model._task_readout

    def task_readout(base: torch.Tensor, deltas: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
        offsets = model.router.task_offsets if base.size(0) > 1 else [0, gates.size(0)]
        mean_gates = torch.stack([gates[a:b].mean(0) for a, b in itertools.pairwise(offsets)])  # [G, K]
        captured.append((base + torch.einsum("gbkd,gk->gbd", deltas, mean_gates)).detach().float())
        return original(base, deltas, gates)

    handle = model.head.register_forward_pre_hook(head_input)
    model._task_readout = task_readout
    try:
        yield captured
    finally:
        handle.remove()
        del model._task_readout  # the class's method again


def predict_representations(model: CftModel, dataset: GraphDataset, batch_size: int, device: torch.device) -> np.ndarray:
    """Pooled adapted representations [n, G, d] of the dataset's molecules (see
    `capture_representations`), computed by the same batched pass as `predict_logits`."""
    with capture_representations(model) as captured:
        predict_logits(model, dataset, batch_size, device)
    if not captured:
        return np.zeros((0, 1, model.backbone.spec.hidden), dtype=np.float32)
    return torch.cat(captured, dim=1).transpose(0, 1).cpu().numpy()
