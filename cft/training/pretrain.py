"""The optional pretraining stage of a recipe: produces the backbone adapters are trained on.

- `masking`: self-supervised attribute masking (Hu et al., 2020): a fraction of atoms get the
  'misc' index of every OGB atom feature (the mask token) and the backbone learns to predict
  their atomic number from the context. Labels are not used.
- `supervised`: multi-task training on the labels of the pretraining data (train split).

Pretrained backbones are cached by the hash of everything that determines them (settings,
backbone config, seed, data identity, featuriser), so sweeps do not pretrain again.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from ogb.utils.features import get_atom_feature_dims
from torch import nn
from torch.utils.data import DataLoader
from torch_geometric.data import Batch

from cft import __version__
from cft.console import info, progress_bar
from cft.data.dataset import load_dataset
from cft.data.graphs import FEATURISER_VERSION
from cft.errors import CftError
from cft.files.atomic import atomic_copy
from cft.files.backbone import load_backbone, save_backbone
from cft.files.paths import cache_dir
from cft.nn.backbone import Backbone
from cft.nn.losses import masked_multitask_loss
from cft.recipe.schema import PretrainConfig
from cft.spec import BackboneSpec
from cft.training.prefix import StoreBatches, as_is
from cft.training.seeding import seed_everything


def pretrain_key(cfg: PretrainConfig, spec: BackboneSpec, seed: int, data_identity: dict) -> str:
    payload = {
        "pretrain": cfg.model_dump(mode="json", exclude={"cache"}),
        "backbone": spec.to_dict(),
        "seed": seed,
        "data": data_identity,
        "featuriser": FEATURISER_VERSION,
        "torch": torch.__version__.split("+")[0],
        "cft": __version__,
        # set by the run before pretraining (train.deterministic): a backbone made without
        # deterministic kernels must not stand in for one made with them
        "deterministic": torch.are_deterministic_algorithms_enabled(),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:24]


def pretrained_backbone(cfg: PretrainConfig, spec: BackboneSpec, seed: int, data_root: Path, out_path: Path, device: torch.device) -> tuple[Backbone, dict]:
    """Pretrain (or fetch from the cache) and write the backbone to `out_path`."""
    dataset = load_dataset(cfg.data, data_root, seed, need_labels=cfg.method == "supervised")
    key = pretrain_key(cfg, spec, seed, dataset.identity)
    cached = cache_dir() / "pretrained" / f"{key}.safetensors"
    if cfg.cache and cached.exists():
        try:
            backbone = load_backbone(cached)
            atomic_copy(cached, out_path)
            info(f"pretrain: reusing cached backbone {cached.name} ({cfg.method} on {dataset.name})")
            return backbone, {"cached": True, "key": key, "seconds": 0.0}
        except CftError:
            pass  # a damaged cache entry is rebuilt
    start = time.perf_counter()
    seed_everything(seed)
    backbone = Backbone(spec).to(device)
    if cfg.method == "masking":
        _pretrain_masking(backbone, dataset, cfg, seed, device)
    else:
        _pretrain_supervised(backbone, dataset, cfg, seed, device)
    backbone = backbone.cpu().eval()
    seconds = time.perf_counter() - start
    details = {"method": cfg.method, "data": dataset.identity, "epochs": cfg.epochs, "key": key, "seconds": round(seconds, 1)}
    save_backbone(backbone, out_path, info=details)
    if cfg.cache:
        cached.parent.mkdir(parents=True, exist_ok=True)
        save_backbone(backbone, cached, info=details)
    return backbone, {"cached": False, "key": key, "seconds": seconds}


# steps between two host reads of the running loss on an accelerator (each read waits for the device);
# on a CPU the read is free and happens every step
LOSS_READ_EVERY = 50


def _loader(dataset, indices, batch_size: int, seed: int, epoch: int) -> DataLoader:
    """The epoch's batches, `indices` reshuffled by (seed, epoch): whole batches sliced from the
    compact store (the same Batch as PyG's collation of the same molecules, several times faster)."""
    generator = torch.Generator().manual_seed(seed * 1000 + epoch)
    order = torch.randperm(len(indices), generator=generator).numpy()
    picked = np.asarray(indices, dtype=np.int64)[order]
    return DataLoader(StoreBatches(dataset.store, dataset.y, picked, batch_size), batch_size=None, shuffle=False, collate_fn=as_is)


def _pretrain_masking(backbone: Backbone, dataset, cfg: PretrainConfig, seed: int, device: torch.device) -> None:
    """Attribute masking: predict the atom type of `mask_rate` of the atoms from their masked graph."""
    dims = get_atom_feature_dims()
    mask_token = torch.tensor([d - 1 for d in dims], device=device)  # OGB's 'misc' index per feature
    head = nn.Linear(backbone.spec.hidden, dims[0]).to(device)
    generator = torch.Generator().manual_seed(seed)

    def loss_of(batch) -> torch.Tensor:
        masked = torch.rand(batch.num_nodes, generator=generator).to(device) < cfg.mask_rate
        if not masked.any():
            masked[0] = True
        x = batch.x.long()
        target = x[masked, 0]
        batch.x = torch.where(masked.unsqueeze(1), mask_token.unsqueeze(0), x)
        return F.cross_entropy(head(backbone.node_states(batch)[masked]), target)

    _fit(backbone, head, dataset, torch.arange(len(dataset)), cfg, seed, device, loss_of)


def _pretrain_supervised(backbone: Backbone, dataset, cfg: PretrainConfig, seed: int, device: torch.device) -> None:
    """Supervised multi-task pretraining on the training split's labels (the masked task loss)."""
    head = nn.Linear(backbone.spec.hidden, len(dataset.tasks)).to(device)
    binary = torch.tensor([k == "binary" for k in dataset.kinds], device=device)

    def loss_of(batch) -> torch.Tensor | None:
        if torch.isnan(batch.y).all():
            return None  # no label in this batch: no step (a zero-gradient Adam step would still move the weights)
        return masked_multitask_loss(head(backbone(batch)), batch.y, binary)

    _fit(backbone, head, dataset, dataset.split["train"], cfg, seed, device, loss_of)


def _fit(backbone: Backbone, head: nn.Module, dataset, indices, cfg: PretrainConfig, seed: int, device: torch.device,
         loss_of: Callable[[Batch], torch.Tensor | None]) -> None:
    """The one pretraining loop: Adam on backbone + head over `indices`, reshuffled per epoch, with a
    progress bar per epoch; `loss_of(batch)` is the objective (None skips the batch)."""
    optimizer = torch.optim.Adam(list(backbone.parameters()) + list(head.parameters()), lr=cfg.lr)
    backbone.train()
    read_every = 1 if device.type == "cpu" else LOSS_READ_EVERY
    for epoch in range(cfg.epochs):
        loader = _loader(dataset, indices, cfg.batch_size, seed, epoch)
        total, count = torch.zeros((), dtype=torch.float64, device=device), 0  # summed on the device: no sync per step
        with progress_bar(f"pretrain ({cfg.method}) epoch {epoch + 1}/{cfg.epochs}", total=len(loader)) as advance:
            for batch in loader:
                loss = loss_of(batch.to(device, non_blocking=True))
                if loss is None:
                    advance(1)
                    continue
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total, count = total + loss.detach().to(torch.float64), count + 1
                advance(1, **({"loss": total.item() / count} if count % read_every == 0 else {}))
        info(f"pretrain ({cfg.method}) epoch {epoch + 1}/{cfg.epochs}: loss {total.item() / max(count, 1):.4f}")
