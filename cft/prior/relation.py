"""Task relation matrices A (the structural prior): from training labels, the identity, and checks.

A is symmetric and non-negative; its diagonal is ignored (cft writes 1 there; the
normalisation adds the self-loops). From labels: |phi|, Jaccard or cosine over co-labelled
molecules, with a minimum support, sparsified by a minimum value and top-k neighbours.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from cft.errors import CftError
from cft.spec import PRIOR_METHODS

METHODS = PRIOR_METHODS


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


def identity_relation(num_tasks: int) -> np.ndarray:
    """No structure: each task related only to itself (A_hat = I)."""
    return np.eye(num_tasks, dtype=np.float32)
