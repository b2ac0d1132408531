"""Training batches sliced straight from the compact graph store, and the frozen-prefix cache.

**Batches.** `StoreBatches` builds batch i of an epoch's order by slicing the flat store
(`GraphStore`: concatenated node/edge tensors with per-graph offsets) in a few vectorised index
operations, into the same `torch_geometric.data.Batch` that PyG's `Batch.from_data_list` makes
from one `Data` object per molecule (same node and edge order, same dtypes, same `batch`/`ptr`),
without building a Python object per molecule. For B graphs with node counts n_g and edge counts
m_g (offsets o_g = n_0 + ... + n_{g-1}):

    x          = store.x[node_ranges]                          [N, 9]   (N = sum n_g)
    edge_index = store.edge_index[:, edge_ranges] + o_g        [2, E]   (E = sum m_g)
    edge_attr  = store.edge_attr[edge_ranges]                  [E, 3]
    batch      = repeat_interleave(arange(B), n_g)             [N]
    ptr        = [0, o_1, ..., o_B]                            [B + 1]

**Frozen prefix.** With a frozen backbone (eval-mode BatchNorm, no dropout), layers 0..L-1 below
the first insertion layer L are a fixed function of the molecule: the node states h^L [n_g, d]
and the virtual node v^L [d] entering layer L are computed once for every molecule of the store
(`compute_prefix`) and sliced per batch (`PrefixCache.take`: h = H[node_ranges], v = V[graph
indices]), so an epoch runs only layers L..num_layers-1. Memory: 4 d bytes per atom plus 4 d per
molecule in float32 (half in bf16); for d = 300 and Tox21's ~18.6 atoms per molecule about 23 KB
per molecule. The cache is valid only when `CftModel.prefix_layer()` is not None (a frozen
backbone); with L = 0 there is nothing to cache, and without adapters (head only) L is the
number of layers: the whole backbone runs once and an epoch trains the heads on pooled cached states. It is keyed by the backbone's
fingerprint, L, the dtype and a hash of the store's tensors, kept in this process's memory (the
last two entries) and optionally on disk as safetensors under `$CFT_CACHE_DIR/prefix/`.
"""

from __future__ import annotations

import hashlib
import math
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch_geometric.data import Batch

from cft.data.graphs import GraphStore
from cft.files.atomic import atomic_write_with
from cft.files.backbone import backbone_fingerprint
from cft.files.paths import cache_dir
from cft.nn.model import CftModel

PREFIX_VERSION = "prefix-1"
_MEMORY: OrderedDict[str, PrefixStates] = OrderedDict()
_MEMORY_ENTRIES = 2


def slice_batch(store: GraphStore, y: torch.Tensor | None, indices, with_index: bool = False) -> Batch:
    """The graphs `indices` of `store` (in that order) as one PyG Batch (see the module docstring).
    `with_index`: also carry `node_index` [N] and `graph_index` [B] (rows of the store) for the prefix cache.
    The index arithmetic is numpy's (single-threaded, no per-op dispatch cost on small arrays)."""
    idx = np.asarray(indices, dtype=np.int64)
    node_ptr, edge_ptr = store.node_ptr.numpy(), store.edge_ptr.numpy()
    node_start, edge_start = node_ptr[idx], edge_ptr[idx]
    n_nodes, n_edges = node_ptr[idx + 1] - node_start, edge_ptr[idx + 1] - edge_start
    ptr = np.zeros(idx.size + 1, dtype=np.int64)
    np.cumsum(n_nodes, out=ptr[1:])
    node_index = _np_ranges(node_start, n_nodes, ptr)
    edge_ptr_b = np.zeros(idx.size + 1, dtype=np.int64)
    np.cumsum(n_edges, out=edge_ptr_b[1:])
    edge_rows = _np_ranges(edge_start, n_edges, edge_ptr_b)
    shift = np.repeat(ptr[:-1], n_edges)
    edge_index = store.edge_index.numpy()[:, edge_rows].astype(np.int64) + shift
    batch = Batch(
        x=torch.from_numpy(store.x.numpy()[node_index]), edge_index=torch.from_numpy(edge_index),
        edge_attr=torch.from_numpy(store.edge_attr.numpy()[edge_rows]),
        batch=torch.from_numpy(np.repeat(np.arange(idx.size, dtype=np.int64), n_nodes)), ptr=torch.from_numpy(ptr),
    )
    if y is not None:
        batch.y = y[torch.from_numpy(idx)]
    if with_index:
        batch.node_index, batch.graph_index = torch.from_numpy(node_index), torch.from_numpy(idx)
    return batch


def _np_ranges(starts: np.ndarray, lengths: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Concatenation of arange(s, s + l) for each (start, length); `offsets` = [0, cumsum(lengths)]."""
    return np.arange(offsets[-1], dtype=np.int64) + np.repeat(starts - offsets[:-1], lengths)


class StoreBatches(torch.utils.data.Dataset):
    """The batches of one epoch (`order` cut into `batch_size` pieces) as a map-style dataset of
    whole batches: `DataLoader(StoreBatches(...), batch_size=None, collate_fn=as_is)`."""

    def __init__(self, store: GraphStore, y: torch.Tensor, order: np.ndarray, batch_size: int, with_index: bool = False):
        self.store, self.y, self.order, self.batch_size, self.with_index = store, y, np.asarray(order, dtype=np.int64), batch_size, with_index

    def __len__(self) -> int:
        return math.ceil(len(self.order) / self.batch_size)

    def __getitem__(self, i: int) -> Batch:
        if not -len(self) <= i < len(self):  # iteration and list() stop here (an empty slice would not end them)
            raise IndexError(f"batch {i} of {len(self)}")
        i %= len(self)
        return slice_batch(self.store, self.y, self.order[i * self.batch_size : (i + 1) * self.batch_size], self.with_index)


def as_is(batch):
    """collate_fn of a DataLoader whose items are already batches."""
    return batch


@dataclass
class PrefixStates:
    """Unadapted states entering layer `layer` for every molecule of a store: h [N_atoms, d]
    (rows aligned with store.x), vn [n_molecules, d] or None (no virtual node)."""

    layer: int
    h: torch.Tensor
    vn: torch.Tensor | None

    @property
    def nbytes(self) -> int:
        return self.h.numel() * self.h.element_size() + (self.vn.numel() * self.vn.element_size() if self.vn is not None else 0)

    def to(self, device: torch.device) -> PrefixStates:
        return PrefixStates(self.layer, self.h.to(device), self.vn.to(device) if self.vn is not None else None)


class PrefixCache:
    """Slices the cached states of a batch built with `with_index=True`."""

    def __init__(self, states: PrefixStates):
        self.states = states
        self.device = states.h.device
        if self.device.type == "cpu":  # numpy's row gather: torch's index_select is slower on a few CPU threads
            self._h_np, self._vn_np = _as_numpy(states.h), _as_numpy(states.vn) if states.vn is not None else None

    def take(self, batch: Batch, device: torch.device) -> tuple[int, torch.Tensor, torch.Tensor | None]:
        """(layer, h [N, d], vn [B, d] or None) for `batch`, as float32 on `device`: the `prefix` of CftModel.forward."""
        s = self.states
        if self.device.type == "cpu":
            h = _from_numpy(self._h_np[batch.node_index.numpy()], s.h.dtype)
            vn = _from_numpy(self._vn_np[batch.graph_index.numpy()], s.h.dtype) if s.vn is not None else None
        else:
            h = s.h.index_select(0, batch.node_index.to(self.device, non_blocking=True))
            vn = s.vn.index_select(0, batch.graph_index.to(self.device, non_blocking=True)) if s.vn is not None else None
        h = h.to(device, torch.float32, non_blocking=True)
        return s.layer, h, vn.to(device, torch.float32, non_blocking=True) if vn is not None else None


def _as_numpy(tensor: torch.Tensor) -> np.ndarray:
    return (tensor.view(torch.int16) if tensor.dtype == torch.bfloat16 else tensor).numpy()


def _from_numpy(array: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    tensor = torch.from_numpy(array)
    return tensor.view(torch.bfloat16) if dtype == torch.bfloat16 else tensor


def store_digest(store: GraphStore) -> str:
    """SHA-256 of the store's tensors: the identity of the molecules the prefix is computed for."""
    digest = hashlib.sha256()
    for name, tensor in store.tensors().items():
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}\n".encode())
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()


def prefix_key(model: CftModel, store: GraphStore, layer: int, dtype: torch.dtype) -> str:
    parts = [PREFIX_VERSION, backbone_fingerprint(model.backbone), str(layer), str(dtype), store_digest(store)]
    return hashlib.sha256("/".join(parts).encode()).hexdigest()[:32]


@torch.no_grad()
def compute_prefix(model: CftModel, store: GraphStore, layer: int, device: torch.device, dtype: torch.dtype = torch.float32,
                   batch_size: int = 512, out_device: torch.device | None = None) -> PrefixStates:
    """Run the frozen backbone's layers 0..layer-1 (eval mode, float32) over every molecule of `store`."""
    bb = model.backbone
    was_training = bb.training
    bb.eval()
    out_device = out_device or torch.device("cpu")
    h_out = torch.empty(store.x.size(0), bb.spec.hidden, dtype=dtype, device=out_device)
    vn_out = torch.empty(len(store), bb.spec.hidden, dtype=dtype, device=out_device) if bb.spec.virtual_node else None
    try:
        for start in range(0, len(store), batch_size):
            rows = np.arange(start, min(start + batch_size, len(store)))
            b = slice_batch(store, None, rows).to(device)
            h, vn = bb.encode(b.x, rows.size)
            for i in range(layer):
                h, vn = bb.layer(i, h, vn, b.edge_index, b.edge_attr, b.batch)
            a, z = int(store.node_ptr[start]), int(store.node_ptr[rows[-1] + 1])
            h_out[a:z] = h.to(out_device, dtype)
            if vn_out is not None:
                vn_out[start : start + rows.size] = vn.to(out_device, dtype)
    finally:
        bb.train(was_training)
    return PrefixStates(layer, h_out, vn_out)


def prefix_cache_for(model: CftModel, store: GraphStore, device: torch.device, mode: str = "memory", bf16: bool = False) -> PrefixCache | None:
    """The prefix cache of `model` over `store`, or None where it does not apply (mode `recompute`, a
    trainable backbone, first insertion layer 0); for a head-only model, the whole backbone's node states. `mode`: `memory` (this process) or `disk`
    (also `$CFT_CACHE_DIR/prefix/KEY.safetensors`, read back in later runs)."""
    layer = model.prefix_layer()
    if mode == "recompute" or layer is None or layer == 0:
        return None
    dtype = torch.bfloat16 if bf16 else torch.float32
    key = prefix_key(model, store, layer, dtype)
    states = _MEMORY.get(key)
    path = cache_dir() / "prefix" / f"{key}.safetensors"
    write = mode == "disk" and not path.exists()
    if states is None and mode == "disk" and path.exists():
        states = _read(path, store, layer, model.backbone.spec.hidden)
        write = states is None  # a damaged or mismatched file is replaced
    if states is None:
        states = compute_prefix(model, store, layer, device, dtype)
    if write:
        tensors = {"h": states.h.contiguous()} | ({"vn": states.vn.contiguous()} if states.vn is not None else {})
        try:
            atomic_write_with(path, lambda tmp: save_file(tensors, str(tmp), metadata={"layer": str(layer), "version": PREFIX_VERSION}))
        except OSError:  # an unwritable cache only costs speed
            pass
    _MEMORY[key] = states
    _MEMORY.move_to_end(key)
    while len(_MEMORY) > _MEMORY_ENTRIES:
        _MEMORY.popitem(last=False)
    if device.type == "cuda" and _fits_on_device(states, device):
        states = states.to(device)  # slicing on the device: no host-to-device copy of states per step
    return PrefixCache(states)


def _read(path: Path, store: GraphStore, layer: int, hidden: int) -> PrefixStates | None:
    """A cache file, or None when it is damaged or does not match the store (then it is recomputed)."""
    try:
        tensors = load_file(str(path))
    except Exception:  # noqa: BLE001 - a damaged cache file is recomputed, never trusted
        return None
    h, vn = tensors.get("h"), tensors.get("vn")
    if h is None or tuple(h.shape) != (store.x.size(0), hidden) or (vn is not None and tuple(vn.shape) != (len(store), hidden)):
        return None
    return PrefixStates(layer, h, vn)


def _fits_on_device(states: PrefixStates, device: torch.device) -> bool:
    free, _ = torch.cuda.mem_get_info(device)
    return states.nbytes < free // 4


def clear_memory() -> None:
    """Forget the prefixes kept in this process (tests)."""
    _MEMORY.clear()
