"""The optional pretraining stage of a recipe: produces the backbone adapters are trained on.

- `masking`: self-supervised attribute masking (Hu et al., 2020): a fraction of atoms get the
  'misc' index of every OGB atom feature (the mask token) and the backbone learns to predict
  their atomic number from the context. Labels are not used.
- `contrastive`: GraphCL (You et al., 2020): two views of each molecule, each with a fraction of
  its atoms removed, are embedded and told apart from the batch's other molecules (NT-Xent).
  Labels are not used. `masking+contrastive` sums both objectives on the same two views: the
  node-level task of masking and a graph-level one, as Hu et al. pair node- and graph-level
  pretraining.
- `supervised`: multi-task training on the labels of the pretraining data (train split).

Pretrained backbones are cached by the hash of everything that determines them (settings,
backbone config, seed, data identity, featuriser), so sweeps do not pretrain again.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from ogb.utils.features import get_atom_feature_dims
from torch import nn
from torch.utils.data import DataLoader
from torch_geometric.data import Batch
from torch_geometric.utils import dropout_node

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

# the settings only the contrastive objectives read
CONTRASTIVE_ONLY = {"drop_rate", "temperature"}


def settings_read(cfg: PretrainConfig, leave_out: frozenset[str] = frozenset()) -> dict:
    """The pretraining settings `cfg.method` reads (JSON values), without `cache` and `leave_out`:
    the contrastive ones only for the contrastive methods, so that a masking backbone's cache key
    (and its record) is what it was before they existed."""
    unread = set() if "contrastive" in cfg.method else CONTRASTIVE_ONLY
    return cfg.model_dump(mode="json", exclude={"cache", *unread, *leave_out})


def pretrain_key(cfg: PretrainConfig, spec: BackboneSpec, seed: int, data_identity: dict) -> str:
    payload = {
        "pretrain": settings_read(cfg),
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
    elif cfg.method == "supervised":
        _pretrain_supervised(backbone, dataset, cfg, seed, device)
    else:
        _pretrain_contrastive(backbone, dataset, cfg, seed, device, with_masking=cfg.method == "masking+contrastive")
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


class _AtomMasking:
    """Hides `rate` of the atoms of a graph: each hidden atom gets OGB's 'misc' index in every atom
    feature (the mask token); the loss asks a linear head for their atomic numbers."""

    def __init__(self, hidden: int, rate: float, seed: int, device: torch.device):
        dims = get_atom_feature_dims()
        self.token = torch.tensor([d - 1 for d in dims], device=device)  # OGB's 'misc' index per feature
        self.head = nn.Linear(hidden, dims[0]).to(device)
        self.rate, self.device = rate, device
        self.generator = torch.Generator().manual_seed(seed)

    def mask(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(x with the hidden atoms' features replaced by the token [N, F], which atoms [N] bool,
        their atomic-number indices [M]); at least one atom is hidden."""
        masked = torch.rand(x.size(0), generator=self.generator).to(self.device) < self.rate
        if not masked.any():
            masked[0] = True
        x = x.long()
        return torch.where(masked.unsqueeze(1), self.token.unsqueeze(0), x), masked, x[masked, 0]

    def loss(self, node_states: torch.Tensor, masked: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self.head(node_states[masked]), target)


def _pretrain_masking(backbone: Backbone, dataset, cfg: PretrainConfig, seed: int, device: torch.device) -> None:
    """Attribute masking: predict the atom type of `mask_rate` of the atoms from their masked graph."""
    masking = _AtomMasking(backbone.spec.hidden, cfg.mask_rate, seed, device)

    def loss_of(batch) -> torch.Tensor:
        batch.x, masked, target = masking.mask(batch.x)
        return masking.loss(backbone.node_states(batch), masked, target)

    _fit(backbone, masking.head, dataset, torch.arange(len(dataset)), cfg, seed, device, loss_of)


def nt_xent(u: torch.Tensor, v: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's normalised temperature-scaled cross-entropy over two views of B graphs.

    u, v: [B, p], row i of each a view of graph i. With the 2B rows z_k = [u; v]_k / ||.||
    (cosine similarity s(a, b) = z_a . z_b) and k' the other view of k's graph:
        loss = mean_k -log( exp(s(k, k')/tau) / sum_{j != k} exp(s(k, j)/tau) ),
    every other row of both views a negative (GraphCL's molecule pretraining uses the one-sided
    form over v only; the symmetric form is SimCLR's)."""
    n = u.size(0)
    z = F.normalize(torch.cat([u, v]), dim=1)
    logits = (z @ z.T / temperature).masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    partner = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z.device)
    return F.cross_entropy(logits, partner)


def dropped_view(batch, rate: float) -> SimpleNamespace:
    """The batch with `rate` of its atoms removed, each with its bonds (PyG's `dropout_node`, the
    kept atoms renumbered): x [N', F], edge_index [2, E'], edge_attr [E', F_e], batch [N'], and the
    same num_graphs (a molecule that loses every atom pools to zeros)."""
    edge_index, kept_edges, kept_atoms = dropout_node(batch.edge_index, p=rate, num_nodes=batch.num_nodes, relabel_nodes=True)
    return SimpleNamespace(x=batch.x[kept_atoms], edge_index=edge_index, edge_attr=batch.edge_attr[kept_edges],
                           batch=batch.batch[kept_atoms], num_graphs=batch.num_graphs)


def _pretrain_contrastive(backbone: Backbone, dataset, cfg: PretrainConfig, seed: int, device: torch.device, with_masking: bool) -> None:
    """GraphCL: two node-dropped views of every molecule, their pooled states [B, d] through a
    projection head g(z) = W2 ReLU(W1 z) (d -> d -> d, discarded afterwards), NT-Xent between them;
    `with_masking` also masks `mask_rate` of each view's atoms and adds masking's loss on them."""
    d = backbone.spec.hidden
    projection = nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Linear(d, d)).to(device)
    masking = _AtomMasking(d, cfg.mask_rate, seed, device) if with_masking else None
    heads = nn.ModuleList([projection, *([masking.head] if masking else [])])

    def embed(view) -> tuple[torch.Tensor, torch.Tensor]:
        """(the view's projected graph states [B, d], its masking loss or 0)"""
        if masking is None:
            return projection(backbone(view)), torch.zeros((), device=device)
        view.x, masked, target = masking.mask(view.x)
        h = backbone.node_states(view)
        return projection(backbone.pool(h, view.batch, view.num_graphs)), masking.loss(h, masked, target)

    def loss_of(batch) -> torch.Tensor:
        (u, mask_u), (v, mask_v) = embed(dropped_view(batch, cfg.drop_rate)), embed(dropped_view(batch, cfg.drop_rate))
        return nt_xent(u, v, cfg.temperature) + (mask_u + mask_v) / 2

    _fit(backbone, heads, dataset, torch.arange(len(dataset)), cfg, seed, device, loss_of)


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
