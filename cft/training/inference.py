"""Running a model over molecules: logits in batches and the metric of a split.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader

from cft.data.dataset import MolDataset
from cft.data.graphs import GraphDataset
from cft.metrics import score
from cft.nn.frozen import BACKWARD
from cft.nn.model import CftModel
from cft.training.distributed import DistContext
from cft.training.prefix import PrefixCache, StoreBatches, as_is


@torch.no_grad()
def predict_logits(
    model: CftModel, dataset: GraphDataset, batch_size: int, device: torch.device, amp: bool = False, prefix: PrefixCache | None = None
) -> np.ndarray:
    """Logits [n, T] of the dataset's molecules, in batches sliced from its compact store; `prefix`:
    the frozen-prefix cache of `model` over that store (cft.training.prefix), or None."""
    outputs = _in_batches(model, dataset, batch_size, device, lambda batch, states: model(batch, prefix=states), amp, prefix)
    if not outputs:
        return np.zeros((0, len(model.spec.tasks)), dtype=np.float32)
    return torch.cat(outputs).numpy()


@torch.no_grad()
def _in_batches(
    model: CftModel, dataset: GraphDataset, batch_size: int, device: torch.device, run: Callable, amp: bool = False, prefix: PrefixCache | None = None
) -> list[torch.Tensor]:
    """`run(batch, prefix_states)` on the dataset's molecules in order, batches sliced from its
    compact store, in eval mode; the outputs on the CPU as float32."""
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
            outputs.append(run(batch, states).float().cpu())
    return outputs


def autocast(device: torch.device, enabled: bool) -> torch.autocast:
    """bf16 autocast on `device` (CUDA or CPU) when enabled; a disabled autocast (a no-op) otherwise."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled and device.type in ("cuda", "cpu"))


def cpu_computes_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices natively (AVX512-BF16 or AMX), so that bf16
    autocast makes the frozen layers' products faster rather than slower (emulated)."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in probes)


def cpu_has_amx() -> bool:
    """Whether this CPU has AMX tiles, on which oneDNN's bf16 matrix products run several times
    faster than fp32 ones (where `train.frozen_bf16: auto` was measured to pay with both products in
    bf16). On CPUs with only AVX512-BF16 `auto` rounds the input gradients' products only: both in
    bf16 trained 1.18x faster on one (an AMD EPYC, commit 3c2a3ef) but were not free of the step
    size, the input gradients alone 1.10x and level with fp32 (docs/distributed.md)."""
    return getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()


def frozen_bf16_wanted(setting: bool | str, device: torch.device) -> bool | str:
    """`train.frozen_bf16` resolved on `device`, as `cft.nn.frozen.bf16_frozen_products` takes it:
    `auto` is both products (True) on a CPU with AMX tiles, the input gradients' only ("backward")
    on a CPU that multiplies bf16 natively without AMX (AVX512-BF16), and off (fp32) on CUDA and on
    any other CPU; "backward" stays "backward" on CUDA and on a CPU that multiplies bf16 natively,
    and is off (fp32) on any other CPU, where emulated bf16 products would be slower than fp32 ones."""
    if setting == "auto":
        if device.type != "cpu":
            return False
        return True if cpu_has_amx() else (BACKWARD if cpu_computes_bf16() else False)
    if setting == BACKWARD:
        return BACKWARD if device.type != "cpu" or cpu_computes_bf16() else False
    return bool(setting)


def evaluate_split(
    model: CftModel, dataset: MolDataset, split: str, metric: str, batch_size: int, device: torch.device, dist: DistContext, amp: bool = False,
    prefix: PrefixCache | None = None, with_loss: bool = False,
) -> dict:
    """`score`'s {"mean", "per_task", ...} of the split; with_loss: also "loss", the model's task
    loss (`CftModel.task_loss`, the training objective without the regulariser) over the split."""
    indices = dataset.split[split]
    logits = predict_logits(model, GraphDataset(dataset.store, dataset.y, dist.shard(indices)), batch_size, device, amp, prefix)
    logits = dist.gather_rows(logits, len(indices), device)
    labels = dataset.labels(split)
    result = score(metric, labels, logits, dataset.tasks)
    if with_loss:
        with torch.no_grad():
            on = model.is_binary.device  # the model's buffers (label statistics) live there
            result["loss"] = float(model.task_loss(torch.as_tensor(logits, device=on), torch.as_tensor(labels, device=on)).cpu())
    return result


def predict_representations(model: CftModel, dataset: GraphDataset, batch_size: int, device: torch.device) -> np.ndarray:
    """Pooled adapted representations [n, G, d] of the dataset's molecules (`CftModel.representations`),
    in the same batches as `predict_logits`."""
    outputs = _in_batches(model, dataset, batch_size, device, lambda batch, states: model.representations(batch, prefix=states))
    if not outputs:
        return np.zeros((0, 1, model.backbone.spec.hidden), dtype=np.float32)
    return torch.cat(outputs, dim=1).transpose(0, 1).numpy()
