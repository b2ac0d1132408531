"""Featurised molecules in one flat, collated store (no per-molecule Python objects kept).

Graphs come from `ogb.utils.smiles2graph` and are cached on disk as safetensors, keyed by the
SHA-256 of the SMILES list and the featuriser version, so a second load is a file read. The
store keeps each molecule's node/edge ranges (`node_ptr`, `edge_ptr`); `GraphDataset` slices it
into PyG `Data` objects on demand, and PyG's DataLoader batches them. Memory holds one copy.
"""

from __future__ import annotations

import hashlib
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import ogb
import rdkit
import torch
from safetensors.torch import load_file, save_file
from torch_geometric.data import Data, Dataset

from cft.console import progress_bar
from cft.files.atomic import atomic_write_with
from cft.files.paths import cache_dir

# what the features are (changes when ogb or rdkit could featurise differently)
FEATURISER_VERSION = f"ogb-smiles2graph/ogb-{ogb.__version__}/rdkit-{rdkit.__version__}"
# how the cache stores them (changes when the on-disk layout changes)
STORE_VERSION = "store-2"

# below this many molecules a process pool costs more than it saves
_PARALLEL_MIN = 4000


@dataclass
class GraphStore:
    """All graphs of a dataset, concatenated. Edge indices are local to each graph.

    Stored compactly: OGB's categorical features fit in uint8 and per-molecule node numbers in
    int16, a quarter to an eighth of int64, which is what lets molpcba-sized sets (437k
    molecules) sit in memory once. The model casts features to long; edge indices are cast per
    graph because PyG's collation offsets them by the batch's node count."""

    x: torch.Tensor  # [N, 9] uint8 OGB atom features
    edge_index: torch.Tensor  # [2, E] int16, per-graph node numbering
    edge_attr: torch.Tensor  # [E, 3] uint8 OGB bond features
    node_ptr: torch.Tensor  # [n + 1] int64
    edge_ptr: torch.Tensor  # [n + 1] int64

    def __post_init__(self) -> None:
        self.x = _compact(self.x, torch.uint8)
        self.edge_attr = _compact(self.edge_attr, torch.uint8)
        self.edge_index = _compact(self.edge_index, torch.int16)
        self.node_ptr, self.edge_ptr = self.node_ptr.long(), self.edge_ptr.long()

    def __len__(self) -> int:
        return self.node_ptr.numel() - 1

    def graph(self, i: int) -> Data:
        a, b = int(self.node_ptr[i]), int(self.node_ptr[i + 1])
        c, d = int(self.edge_ptr[i]), int(self.edge_ptr[i + 1])
        return Data(x=self.x[a:b], edge_index=self.edge_index[:, c:d].long(), edge_attr=self.edge_attr[c:d], num_nodes=b - a)

    def select(self, keep: np.ndarray) -> "GraphStore":
        """A new store holding only the graphs whose indices are in `keep` (in that order)."""
        keep_t = torch.as_tensor(keep, dtype=torch.long)
        n_nodes = self.node_ptr[1:] - self.node_ptr[:-1]
        n_edges = self.edge_ptr[1:] - self.edge_ptr[:-1]
        node_idx = _ranges(self.node_ptr[keep_t], n_nodes[keep_t])
        edge_idx = _ranges(self.edge_ptr[keep_t], n_edges[keep_t])
        return GraphStore(
            x=self.x[node_idx],
            edge_index=self.edge_index[:, edge_idx],
            edge_attr=self.edge_attr[edge_idx],
            node_ptr=torch.cat([torch.zeros(1, dtype=torch.long), n_nodes[keep_t].cumsum(0)]),
            edge_ptr=torch.cat([torch.zeros(1, dtype=torch.long), n_edges[keep_t].cumsum(0)]),
        )

    def tensors(self) -> dict[str, torch.Tensor]:
        return {k: getattr(self, k).contiguous() for k in ("x", "edge_index", "edge_attr", "node_ptr", "edge_ptr")}


def _compact(tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """`tensor` as `dtype` when every value fits (else as it is: exotic inputs stay correct)."""
    if tensor.dtype == dtype:
        return tensor
    info = torch.iinfo(dtype)
    if tensor.numel() == 0 or (int(tensor.min()) >= info.min and int(tensor.max()) <= info.max):
        return tensor.to(dtype)
    return tensor


def _ranges(starts: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Concatenate arange(start, start+length) for each pair, vectorised."""
    total = int(lengths.sum())
    if total == 0:
        return torch.zeros(0, dtype=torch.long)
    offsets = torch.repeat_interleave(starts - torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)[:-1]]), lengths)
    return torch.arange(total, dtype=torch.long) + offsets


class GraphDataset(Dataset):
    """A split of a featurised dataset as a PyG Dataset (labels `y` of shape [1, T] per graph)."""

    def __init__(self, store: GraphStore, y: torch.Tensor, indices: Sequence[int] | np.ndarray):
        super().__init__(None)
        self.store = store
        self.y = y
        self.indices_ = np.asarray(indices, dtype=np.int64)

    def len(self) -> int:
        return len(self.indices_)

    def get(self, idx: int) -> Data:
        i = int(self.indices_[idx])
        data = self.store.graph(i)
        data.y = self.y[i : i + 1]
        return data


# --------------------------------------------------------------------------- featurisation


def _featurise_one(smiles: str) -> Optional[dict]:
    from ogb.utils import smiles2graph

    if not isinstance(smiles, str) or not smiles.strip():
        return None
    try:
        graph = smiles2graph(smiles)
    except Exception:  # smiles2graph crashes on SMILES RDKit cannot parse
        return None
    if graph["num_nodes"] == 0:
        return None
    return graph


def _featurise_chunk(smiles: list[str]) -> list[Optional[dict]]:
    from rdkit import RDLogger

    RDLogger.DisableLog("rdApp.*")  # parse failures are reported by cft, once, not per molecule
    return [_featurise_one(s) for s in smiles]


def _assemble(graphs: list[Optional[dict]]) -> tuple[GraphStore, np.ndarray]:
    valid = np.array([g is not None for g in graphs], dtype=bool)
    kept = [g for g in graphs if g is not None]
    n_nodes = np.array([g["num_nodes"] for g in kept], dtype=np.int64)
    n_edges = np.array([g["edge_index"].shape[1] for g in kept], dtype=np.int64)
    cat = lambda arrays, shape: (np.concatenate(arrays) if arrays else np.zeros(shape, dtype=np.int64))  # noqa: E731
    store = GraphStore(
        x=torch.from_numpy(cat([g["node_feat"] for g in kept], (0, 9)).astype(np.int64)),
        edge_index=torch.from_numpy(
            np.concatenate([g["edge_index"] for g in kept], axis=1).astype(np.int64) if kept else np.zeros((2, 0), dtype=np.int64)
        ),
        edge_attr=torch.from_numpy(cat([g["edge_feat"].reshape(-1, 3) for g in kept], (0, 3)).astype(np.int64)),
        node_ptr=torch.from_numpy(np.concatenate([[0], np.cumsum(n_nodes)]).astype(np.int64)),
        edge_ptr=torch.from_numpy(np.concatenate([[0], np.cumsum(n_edges)]).astype(np.int64)),
    )
    return store, valid


def smiles_key(smiles: Sequence[str]) -> str:
    digest = hashlib.sha256(f"{FEATURISER_VERSION}/{STORE_VERSION}".encode())
    for s in smiles:
        digest.update(b"\n")
        digest.update(str(s).encode())
    return digest.hexdigest()


def featurise(smiles: Sequence[str], label: str = "molecules", use_cache: bool = True) -> tuple[GraphStore, np.ndarray, float, bool]:
    """Featurise SMILES (cached). Returns (store of valid graphs, valid mask, seconds, cache hit)."""
    start = time.perf_counter()
    path = cache_dir() / "features" / f"{smiles_key(smiles)}.safetensors"
    if use_cache and path.exists():
        try:
            tensors = load_file(str(path))
            valid = tensors.pop("valid").numpy().astype(bool)
            if valid.shape[0] == len(smiles):
                return GraphStore(**tensors), valid, time.perf_counter() - start, True
        except Exception:  # a damaged cache entry is rebuilt, never trusted
            pass
    graphs = _featurise_all(list(smiles), label)
    store, valid = _assemble(graphs)
    if use_cache:
        tensors = store.tensors()
        tensors["valid"] = torch.from_numpy(valid.astype(np.uint8))
        try:
            atomic_write_with(path, lambda tmp: save_file(tensors, str(tmp)))
        except Exception:  # an unwritable cache only costs speed
            pass
    return store, valid, time.perf_counter() - start, False


def _featurise_all(smiles: list[str], label: str) -> list[Optional[dict]]:
    n = len(smiles)
    chunk = 500
    chunks = [smiles[i : i + chunk] for i in range(0, n, chunk)]
    workers = min(os.cpu_count() or 1, 8)
    out: list[Optional[dict]] = []
    with progress_bar(f"featurising {label}", total=n) as advance:
        if n >= _PARALLEL_MIN and workers > 1:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                for part in pool.map(_featurise_chunk, chunks):
                    out.extend(part)
                    advance(len(part))
        else:
            for piece in chunks:
                out.extend(_featurise_chunk(piece))
                advance(len(piece))
    return out
