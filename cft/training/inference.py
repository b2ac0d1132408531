"""Running a model over molecules: logits in batches and the metric of a split.
"""

from __future__ import annotations

import numpy as np
import torch
from torch_geometric.loader import DataLoader

from cft.data.dataset import MolDataset
from cft.data.graphs import GraphDataset
from cft.metrics import score
from cft.nn.model import CftModel
from cft.training.distributed import DistContext


@torch.no_grad()
def predict_logits(model: CftModel, dataset: GraphDataset, batch_size: int, device: torch.device, amp: bool = False) -> np.ndarray:
    model.eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    outputs = []
    for batch in loader:
        batch = batch.to(device, non_blocking=True)
        with autocast(device, amp):
            outputs.append(model(batch).float().cpu())
    if not outputs:
        return np.zeros((0, len(model.spec.tasks)), dtype=np.float32)
    return torch.cat(outputs).numpy()


def autocast(device: torch.device, enabled: bool) -> torch.autocast:
    """bf16 autocast on CUDA when enabled; a disabled autocast (a no-op) otherwise."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled and device.type == "cuda")


def evaluate_split(model: CftModel, dataset: MolDataset, split: str, metric: str, batch_size: int, device: torch.device, dist: DistContext, amp: bool = False) -> dict:
    indices = dataset.split[split]
    logits = predict_logits(model, GraphDataset(dataset.store, dataset.y, dist.shard(indices)), batch_size, device, amp)
    logits = dist.gather_rows(logits, len(indices), device)
    return score(metric, dataset.labels(split), logits, dataset.tasks)
