"""The structural prior: a relation matrix A over tasks and its GCN normalisation.

A is symmetric and non-negative; its diagonal is ignored (cft writes 1 there; the
normalisation adds the self-loops). Sources: training labels (|phi|, Jaccard or cosine over co-labelled molecules,
with a minimum support, sparsified), a file (.npy read with allow_pickle=False, or a CSV
with task names as header and index), or the identity (no structure). The normalised matrix
is A_hat = D^-1/2 (A + I) D^-1/2, computed with torch-geometric's `gcn_norm`; it stays
differentiable in A so a `learned` prior can be trained.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pandas as pd
import torch
from torch_geometric.nn.conv.gcn_conv import gcn_norm
from torch_geometric.utils import dense_to_sparse, to_dense_adj

from cft.errors import CftError
from cft.fsutil import atomic_write_json, atomic_write_with

METHODS = ("phi", "jaccard", "cosine")


# --------------------------------------------------------------------------- from labels


def relation_from_labels(
    labels: np.ndarray,
    method: str = "phi",
    min_support: int = 20,
    min_value: float = 0.0,
    top_k: Optional[int] = None,
) -> np.ndarray:
    """Task relation from a [n, T] label matrix (NaN = missing), over co-labelled molecules.

    `phi` is |Pearson| of the labels (for 0/1 labels this is the phi coefficient; for
    regression tasks it is |r|), `jaccard` is |both positive| / |either positive|, `cosine`
    is the cosine of the label vectors. Pairs with fewer than `min_support` co-labelled
    molecules, or weaker than `min_value`, get no edge; `top_k` keeps each task's k strongest.
    """
    if method not in METHODS:
        raise CftError(f"unknown prior method {method!r}; choose one of {', '.join(METHODS)}.")
    y = np.asarray(labels, dtype=np.float64)
    mask = (~np.isnan(y)).astype(np.float64)
    y0 = np.nan_to_num(y, nan=0.0)
    support = mask.T @ mask
    with np.errstate(divide="ignore", invalid="ignore"):
        if method == "phi":
            n = np.maximum(support, 1.0)
            sx = y0.T @ mask  # [t, u]: sum of y_t over molecules labelled for both
            sxx = (y0 * y0).T @ mask
            sxy = y0.T @ y0
            cov = sxy - sx * sx.T / n
            var_x, var_y = sxx - sx * sx / n, (sxx - sx * sx / n).T
            rel = np.abs(cov / np.sqrt(var_x * var_y))
        elif method == "jaccard":
            pos = (y0 > 0.5).astype(np.float64) * mask
            both = pos.T @ pos
            either = pos.T @ mask + (pos.T @ mask).T - both
            rel = both / either
        else:
            sxy = y0.T @ y0
            sxx = (y0 * y0).T @ mask
            rel = np.abs(sxy / np.sqrt(sxx * sxx.T))
    rel = np.nan_to_num(rel, nan=0.0, posinf=0.0, neginf=0.0)
    rel[support < min_support] = 0.0
    rel[rel < min_value] = 0.0
    np.fill_diagonal(rel, 0.0)
    if top_k is not None and top_k < rel.shape[0] - 1:
        keep = np.zeros_like(rel, dtype=bool)
        order = np.argsort(-rel, axis=1, kind="stable")[:, :top_k]
        np.put_along_axis(keep, order, True, axis=1)
        rel = np.where(keep | keep.T, rel, 0.0)
    rel = np.maximum(rel, rel.T)  # exact symmetry
    np.fill_diagonal(rel, 1.0)  # self-relation, for display; the normalisation ignores it
    return rel.astype(np.float32)


# --------------------------------------------------------------------------- validation and files


def check_relation(matrix: np.ndarray, num_tasks: int, source: str) -> np.ndarray:
    """Refuse a relation matrix of the wrong shape, with NaN/inf, negative or asymmetric."""
    a = np.asarray(matrix)
    if a.dtype.kind not in "fiub":
        raise CftError(f"{source}: a relation matrix must hold numbers, not {a.dtype}.")
    a = a.astype(np.float64)
    if a.ndim != 2 or a.shape[0] != a.shape[1]:
        raise CftError(f"{source}: a relation matrix must be square (T x T), got shape {a.shape}.")
    if a.shape[0] != num_tasks:
        raise CftError(f"{source}: the relation matrix is {a.shape[0]}x{a.shape[1]} but there are {num_tasks} tasks.", hint="Build it over the same tasks, in the same order.")
    if not np.isfinite(a).all():
        bad = np.argwhere(~np.isfinite(a))[0]
        raise CftError(f"{source}: the relation matrix has NaN or inf (first at row {bad[0]}, column {bad[1]}).")
    if (a < 0).any():
        bad = np.argwhere(a < 0)[0]
        raise CftError(f"{source}: the relation matrix has negative entries (first at row {bad[0]}, column {bad[1]}: {a[bad[0], bad[1]]:g}).", hint="Use absolute correlations.")
    if not np.allclose(a, a.T, atol=1e-6, rtol=1e-5):
        diff = np.abs(a - a.T)
        i, j = np.unravel_index(np.argmax(diff), diff.shape)
        raise CftError(f"{source}: the relation matrix is not symmetric (A[{i},{j}]={a[i, j]:g} but A[{j},{i}]={a[j, i]:g}).", hint="Symmetrise it, e.g. (A + A.T) / 2.")
    return a.astype(np.float32)


def tasks_sidecar(path: Path) -> Path:
    return path.with_suffix(".tasks.json")


def read_relation(path: str | Path, tasks: Sequence[str]) -> np.ndarray:
    """Read a relation matrix for `tasks` from .npy (never unpickled) or labelled .csv."""
    path = Path(path)
    if not path.exists():
        raise CftError(f"Prior file {path} does not exist.", hint="Check prior.path / --prior; `cft prior build` writes one.")
    suffix = "".join(path.suffixes[-2:]) if path.name.endswith(".gz") else path.suffix
    if suffix == ".npy":
        matrix = _read_npy(path)
        names = _read_sidecar(path)
        if names is not None:
            matrix = _reorder(matrix, names, tasks, f"{path} (task names from {tasks_sidecar(path).name})")
    elif suffix in (".csv", ".csv.gz"):
        matrix = _read_csv(path, tasks)
    else:
        raise CftError(f"Prior file {path}: expected .npy or .csv, got {path.suffix or 'no suffix'}.")
    return check_relation(matrix, len(tasks), str(path))


def _read_npy(path: Path) -> np.ndarray:
    """A numeric 2-D array from .npy. The header is checked first: a file declaring Python
    objects is refused without reading its data (so nothing in it is ever unpickled), and a
    header whose shape the file cannot hold is refused before any memory is allocated."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            if version == (1, 0):
                shape, _fortran, dtype = np.lib.format.read_array_header_1_0(fh)
            elif version == (2, 0):
                shape, _fortran, dtype = np.lib.format.read_array_header_2_0(fh)
            else:
                raise ValueError(f"unsupported .npy format version {version}")
            offset = fh.tell()
    except Exception as exc:  # numpy's header parser raises ValueError, SyntaxError, tokenize.TokenError, ...
        raise CftError(f"{path} is not a valid .npy array ({str(exc)[:200] or type(exc).__name__}).", hint="Save a plain numeric array with np.save(path, array).") from None
    if dtype.hasobject:
        raise CftError(
            f"{path} holds pickled Python objects; cft refuses to unpickle it (its data was not read).",
            hint="Save a plain numeric array with np.save(path, array).",
        )
    if dtype.kind not in "fiub" or dtype.fields is not None or dtype.subdtype is not None:
        raise CftError(f"{path}: a relation matrix must hold numbers, not {dtype}.")
    if len(shape) != 2 or shape[0] != shape[1]:
        raise CftError(f"{path}: a relation matrix must be square (T x T), got shape {tuple(shape)}.")
    if shape[0] * shape[1] * dtype.itemsize > size - offset:
        raise CftError(f"{path} is truncated: its header declares a {shape[0]}x{shape[1]} {dtype} array, more than the file holds.")
    try:
        with open(path, "rb") as fh:
            return np.load(fh, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise CftError(f"{path} is not a valid .npy array ({str(exc)[:200]}).") from None


def _read_sidecar(path: Path) -> Optional[list[str]]:
    side = tasks_sidecar(path)
    if not side.exists():
        return None
    try:
        names = json.loads(side.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CftError(f"{side}: task-name list is not valid JSON ({exc}).") from None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise CftError(f"{side}: expected a JSON list of task names.")
    return names


def _read_csv(path: Path, tasks: Sequence[str]) -> np.ndarray:
    try:
        frame = pd.read_csv(path, index_col=0)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError, OSError, EOFError) as exc:
        raise CftError(f"{path} is not a readable CSV relation matrix ({str(exc).splitlines()[0] if str(exc) else exc}).") from None
    header = [str(c) for c in frame.columns]
    index = [str(i) for i in frame.index]
    if header != index:
        raise CftError(f"{path}: the header and the index must list the same task names in the same order.")
    try:
        values = frame.to_numpy(dtype=np.float64)
    except (ValueError, TypeError):
        raise CftError(f"{path}: every cell of a relation matrix must be a number.") from None
    return _reorder(values, header, tasks, str(path))


def _reorder(matrix: np.ndarray, names: Sequence[str], tasks: Sequence[str], source: str) -> np.ndarray:
    if list(names) == list(tasks):
        return matrix
    missing = [t for t in tasks if t not in names]
    extra = [n for n in names if n not in tasks]
    if missing or extra or len(names) != len(tasks):
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}")
        if extra:
            parts.append(f"unexpected {', '.join(extra[:8])}{' ...' if len(extra) > 8 else ''}")
        raise CftError(f"{source}: its task names do not match the model's tasks ({'; '.join(parts) or 'duplicates'}).")
    a = np.asarray(matrix)
    if a.ndim != 2 or a.shape != (len(names), len(names)):
        raise CftError(f"{source}: shape {a.shape} does not match its {len(names)} task names.")
    order = [list(names).index(t) for t in tasks]
    return a[np.ix_(order, order)]


def write_relation(path: str | Path, matrix: np.ndarray, tasks: Sequence[str]) -> None:
    """Write .npy (plus a .tasks.json sidecar) or a labelled .csv, atomically."""
    path = Path(path)
    matrix = check_relation(matrix, len(tasks), str(path))
    if path.suffix == ".csv":
        frame = pd.DataFrame(matrix, index=list(tasks), columns=list(tasks))
        atomic_write_with(path, lambda tmp: frame.to_csv(tmp))
        return
    if path.suffix != ".npy":
        raise CftError(f"{path}: write a relation matrix as .npy or .csv.")

    def save(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            np.save(fh, matrix, allow_pickle=False)

    atomic_write_with(path, save)
    atomic_write_json(tasks_sidecar(path), list(tasks))


# --------------------------------------------------------------------------- normalisation


def normalized_adjacency(relation: torch.Tensor) -> torch.Tensor:
    """A_hat = D^-1/2 (A + I) D^-1/2 as a dense [T, T] tensor, differentiable in A."""
    t = relation.size(0)
    off_diagonal = relation * (1.0 - torch.eye(t, dtype=relation.dtype, device=relation.device))
    edge_index, weight = dense_to_sparse(off_diagonal)
    edge_index, weight = gcn_norm(edge_index, weight, num_nodes=t, add_self_loops=True)
    return to_dense_adj(edge_index, edge_attr=weight, max_num_nodes=t)[0]


class NormalizedAdjacencyCache:
    """A_hat of a constant relation matrix, computed once (not at every training step).

    The entry is keyed by the tensor's storage and version counter, so loading new values
    into the buffer (load_state_dict copies in place) or moving it to another device
    recomputes it. Learned priors change every step and are not cached."""

    def __init__(self):
        self._key = None
        self._value: torch.Tensor | None = None

    def __call__(self, relation: torch.Tensor) -> torch.Tensor:
        if relation.requires_grad:
            return normalized_adjacency(relation)
        key = (relation.data_ptr(), relation._version, relation.device, relation.dtype, tuple(relation.shape))
        if key != self._key or self._value is None:
            with torch.no_grad():
                self._value = normalized_adjacency(relation)
            self._key = key
        return self._value


def identity_relation(num_tasks: int) -> np.ndarray:
    """No structure: each task related only to itself (A_hat = I)."""
    return np.eye(num_tasks, dtype=np.float32)
