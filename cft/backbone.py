"""The pretrained GNN: GIN (or GCN) with an optional virtual node, on OGB atom/bond encoders.

The layer structure follows the OGB molecule example (`GNN_node_Virtualnode`): for each layer,
add the virtual node to every atom, message passing, batch norm, ReLU (not after the last
layer), dropout; the virtual node is updated from a sum-pool of the layer's input. The
model is exposed layer by layer (`encode`, `layer`, `pool`) so that adapters can be inserted
after any layer without copying the backbone.

Backbones are saved as safetensors with their config and a fingerprint (SHA-256 over the
config and every tensor); bundles record the fingerprint they were trained against.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from ogb.graphproppred.mol_encoder import AtomEncoder, BondEncoder
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn
from torch_geometric.nn import GINEConv, MessagePassing, global_add_pool, global_max_pool, global_mean_pool
from torch_geometric.nn.conv.gcn_conv import gcn_norm

from cft.errors import CftError
from cft.stfile import read_header, write_safetensors

BACKBONE_FORMAT = "cft-backbone"
BACKBONE_FORMAT_VERSION = "1"


@dataclass(frozen=True)
class BackboneSpec:
    arch: str = "gin"
    virtual_node: bool = True
    num_layers: int = 5
    hidden: int = 300
    dropout: float = 0.5
    pooling: str = "mean"
    residual: bool = False

    @classmethod
    def from_config(cls, cfg) -> "BackboneSpec":
        return cls(**{k: getattr(cfg, k) for k in cls.__dataclass_fields__})

    @classmethod
    def from_dict(cls, raw: dict) -> "BackboneSpec":
        unknown = set(raw) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown backbone config keys {sorted(unknown)}")
        return cls(**raw)


class OgbGCNConv(MessagePassing):
    """GCN with bond features as in the OGB example; normalisation from PyG's gcn_norm."""

    def __init__(self, hidden: int):
        super().__init__(aggr="add")
        self.linear = nn.Linear(hidden, hidden)
        self.root_emb = nn.Embedding(1, hidden)
        self.bond_encoder = BondEncoder(hidden)

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor, edge_attr: torch.Tensor) -> torch.Tensor:
        x = self.linear(x)
        edge_embedding = self.bond_encoder(edge_attr.long())
        num_edges = edge_index.size(1)
        # gcn_norm appends one self-loop per node after the real edges: its weight is 1/deg
        _, weight = gcn_norm(edge_index, None, x.size(0), add_self_loops=True)
        edge_norm, self_norm = weight[:num_edges], weight[num_edges:]
        out = self.propagate(edge_index, x=x, edge_attr=edge_embedding, norm=edge_norm)
        return out + F.relu(x + self.root_emb.weight) * self_norm.view(-1, 1)

    def message(self, x_j: torch.Tensor, edge_attr: torch.Tensor, norm: torch.Tensor) -> torch.Tensor:
        return norm.view(-1, 1) * F.relu(x_j + edge_attr)


class GINLayer(nn.Module):
    """OGB's GIN layer: PyG's GINEConv on bond embeddings from a per-layer BondEncoder."""

    def __init__(self, hidden: int):
        super().__init__()
        mlp = nn.Sequential(nn.Linear(hidden, 2 * hidden), nn.BatchNorm1d(2 * hidden), nn.ReLU(), nn.Linear(2 * hidden, hidden))
        self.conv = GINEConv(mlp, train_eps=True)
        self.bond_encoder = BondEncoder(hidden)

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor, edge_attr: torch.Tensor) -> torch.Tensor:
        return self.conv(x, edge_index, self.bond_encoder(edge_attr.long()))


_POOL = {"mean": global_mean_pool, "sum": global_add_pool, "max": global_max_pool}


class Backbone(nn.Module):
    def __init__(self, spec: BackboneSpec):
        super().__init__()
        self.spec = spec
        d = spec.hidden
        self.atom_encoder = AtomEncoder(d)
        self.convs = nn.ModuleList([GINLayer(d) if spec.arch == "gin" else OgbGCNConv(d) for _ in range(spec.num_layers)])
        self.norms = nn.ModuleList([nn.BatchNorm1d(d) for _ in range(spec.num_layers)])
        if spec.virtual_node:
            self.vn_embedding = nn.Embedding(1, d)
            nn.init.zeros_(self.vn_embedding.weight)
            self.vn_mlps = nn.ModuleList(
                [
                    nn.Sequential(nn.Linear(d, 2 * d), nn.BatchNorm1d(2 * d), nn.ReLU(), nn.Linear(2 * d, d), nn.BatchNorm1d(d), nn.ReLU())
                    for _ in range(spec.num_layers - 1)
                ]
            )

    @property
    def num_layers(self) -> int:
        return self.spec.num_layers

    def encode(self, x: torch.Tensor, num_graphs: int) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        h = self.atom_encoder(x.long())  # features are stored as uint8
        vn = self.vn_embedding.weight.expand(num_graphs, -1) if self.spec.virtual_node else None
        return h, vn

    def layer(
        self, index: int, h: torch.Tensor, vn: Optional[torch.Tensor], edge_index: torch.Tensor, edge_attr: torch.Tensor, batch: torch.Tensor
    ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Layer `index`: returns (node states after it, virtual node for the next layer)."""
        h_in = h + vn[batch] if vn is not None else h
        out = self.norms[index](self.convs[index](h_in, edge_index, edge_attr))
        last = index == self.spec.num_layers - 1
        out = F.dropout(out if last else F.relu(out), self.spec.dropout, training=self.training)
        if self.spec.residual:
            out = out + h_in
        if vn is not None and not last:
            update = self.vn_mlps[index](global_add_pool(h_in, batch, size=vn.size(0)) + vn)
            update = F.dropout(update, self.spec.dropout, training=self.training)
            vn = vn + update if self.spec.residual else update
        return out, vn

    def pool(self, h: torch.Tensor, batch: torch.Tensor, num_graphs: int) -> torch.Tensor:
        return _POOL[self.spec.pooling](h, batch, size=num_graphs)

    def forward(self, data) -> torch.Tensor:
        """Pooled graph representation (no adapters): used by pretraining and baselines."""
        num_graphs = int(data.num_graphs)
        h, vn = self.encode(data.x, num_graphs)
        for i in range(self.spec.num_layers):
            h, vn = self.layer(i, h, vn, data.edge_index, data.edge_attr, data.batch)
        return self.pool(h, data.batch, num_graphs)

    def node_states(self, data) -> torch.Tensor:
        num_graphs = int(data.num_graphs)
        h, vn = self.encode(data.x, num_graphs)
        for i in range(self.spec.num_layers):
            h, vn = self.layer(i, h, vn, data.edge_index, data.edge_attr, data.batch)
        return h


# --------------------------------------------------------------------------- files


def fingerprint(spec: BackboneSpec, state: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256(json.dumps(asdict(spec), sort_keys=True).encode())
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"\n{name}:{tensor.dtype}:{tuple(tensor.shape)}\n".encode())
        digest.update(tensor.numpy().tobytes() if tensor.dtype != torch.bfloat16 else tensor.view(torch.int16).numpy().tobytes())
    return digest.hexdigest()[:32]


def backbone_fingerprint(backbone: Backbone) -> str:
    return fingerprint(backbone.spec, backbone.state_dict())


def save_backbone(backbone: Backbone, path: str | Path, info: Optional[dict] = None) -> str:
    state = {k: v.detach().cpu().contiguous() for k, v in backbone.state_dict().items()}
    fp = fingerprint(backbone.spec, state)
    header = {
        "format": BACKBONE_FORMAT,
        "format_version": BACKBONE_FORMAT_VERSION,
        "config": asdict(backbone.spec),
        "fingerprint": fp,
        "info": info or {},
    }
    write_safetensors(path, state, header)
    return fp


def read_backbone_header(path: str | Path) -> dict:
    header = read_header(path, "backbone")
    if header.get("format") != BACKBONE_FORMAT:
        hint = "That is a bundle; pass a backbone." if header.get("format") == "cft-bundle" else "Pass a backbone.safetensors written by cft."
        raise CftError(f"{path} is not a cft backbone (format {header.get('format')!r}).", hint=hint)
    if header.get("format_version") != BACKBONE_FORMAT_VERSION:
        raise CftError(f"{path} has backbone format version {header.get('format_version')!r}; this cft reads {BACKBONE_FORMAT_VERSION}.")
    return header


def spec_problems(spec: BackboneSpec) -> list[str]:
    """Range checks of a backbone config read from a file (the recipe's bounds)."""
    out = []
    if spec.arch not in ("gin", "gcn"):
        out.append(f"arch {spec.arch!r}")
    if spec.pooling not in _POOL:
        out.append(f"pooling {spec.pooling!r}")
    if not 1 <= spec.num_layers <= 32:
        out.append(f"num_layers {spec.num_layers}")
    if not 2 <= spec.hidden <= 4096:
        out.append(f"hidden {spec.hidden}")
    if not (0 <= spec.dropout < 1):
        out.append(f"dropout {spec.dropout}")
    return out


def spec_from_dict(raw, source: str) -> BackboneSpec:
    """A BackboneSpec from file metadata, type- and range-checked (CftError otherwise)."""
    from pydantic import TypeAdapter, ValidationError

    try:
        if not isinstance(raw, dict):
            raise TypeError(f"config is a {type(raw).__name__}, not a mapping")
        BackboneSpec.from_dict(raw)  # unknown keys
        spec = TypeAdapter(BackboneSpec).validate_python(raw, strict=False)
    except (ValidationError, ValueError, TypeError) as exc:
        first = str(exc).splitlines()[:3]
        raise CftError(f"{source}: the backbone config in its metadata is invalid ({' '.join(first)[:300]}).", hint="Re-create the file.") from None
    problems = spec_problems(spec)
    if problems:
        raise CftError(f"{source}: the backbone config in its metadata is out of range ({', '.join(problems)}).", hint="Re-create the file.")
    return spec


def load_backbone(path: str | Path) -> Backbone:
    """Load a backbone file. Its tensors are checked against its config (names, shapes, dtypes,
    from the safetensors header alone) before any memory is allocated, then its fingerprint."""
    from cft.stfile import compare_tensors, tensor_index

    path = Path(path)
    metadata = read_backbone_header(path)
    spec = spec_from_dict(metadata.get("config"), str(path))
    index = tensor_index(path, "backbone")
    with torch.device("meta"):
        expected = Backbone(spec).state_dict()
    differences = compare_tensors(expected, index)
    if differences:
        raise CftError(f"{path}: backbone tensors do not match its config ({'; '.join(differences)}).", hint="The file is damaged; re-create it.")
    try:
        backbone = Backbone(spec)
        state = load_file(str(path))
        backbone.load_state_dict(state, strict=True)
    except (KeyError, ValueError, TypeError, RuntimeError, SafetensorError, OSError) as exc:
        raise CftError(f"{path}: backbone tensors do not match its config ({str(exc)[:300]}).", hint="The file is damaged; re-create it.") from None
    if any(v.is_floating_point() and not torch.isfinite(v).all() for v in state.values()):
        raise CftError(f"{path}: the backbone holds NaN or inf weights.", hint="Re-create it (a diverged pretraining?).")
    actual = backbone_fingerprint(backbone)
    if actual != metadata.get("fingerprint"):
        raise CftError(
            f"{path}: fingerprint {metadata.get('fingerprint')} in the header does not match its tensors ({actual}).",
            hint="The file was modified or damaged; re-create it.",
        )
    return backbone
