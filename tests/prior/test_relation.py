"""cft.prior.relation: relation matrices from labels."""

from __future__ import annotations

import numpy as np
import pytest

from cft.prior.relation import relation_from_labels


def test_label_prior_statistics():
    y = np.array([[1, 1, 0], [0, 0, 1], [1, 1, np.nan], [0, 0, 0], [1, 1, 1], [0, 0, np.nan]], dtype=float)
    phi = relation_from_labels(y, "phi", min_support=2)
    assert phi[0, 1] == pytest.approx(1.0) and phi[0, 0] == 1.0
    assert np.allclose(phi, phi.T) and (phi >= 0).all()
    assert relation_from_labels(y, "phi", min_support=10)[0, 1] == 0.0, "below the minimum support"
    jac = relation_from_labels(y, "jaccard", min_support=2)
    assert jac[0, 1] == pytest.approx(1.0)


def _edges(matrix: np.ndarray) -> np.ndarray:
    """Off-diagonal non-zero pattern."""
    off = np.array(matrix, dtype=np.float64)
    np.fill_diagonal(off, 0.0)
    return off > 0


@pytest.mark.parametrize("method", ["phi", "cosine", "jaccard"])
@pytest.mark.parametrize("k", [1, 2, 3])
def test_label_prior_top_k_keeps_each_tasks_k_strongest_and_nothing_else(method, k):
    """An edge survives top-k iff it is among the k strongest of at least one of its two tasks.

    Checked against the unpruned matrix, task by task: every task keeps its own k strongest
    links (with their unpruned values), each task's own choices are at most k, every kept edge
    was chosen by one of its ends, and the whole matrix has at most T*k edges.
    """
    rng = np.random.default_rng(k)
    t = 10
    y = (rng.random((400, t)) < rng.uniform(0.2, 0.8, t)).astype(float)
    y[:, 1::2] = np.where(rng.random((400, t // 2)) < 0.7, y[:, 0::2], y[:, 1::2])  # some stronger links
    y[rng.random(y.shape) < 0.1] = np.nan
    full = relation_from_labels(y, method, min_support=5)
    pruned = relation_from_labels(y, method, min_support=5, top_k=k)
    full_off = np.array(full, dtype=np.float64)
    np.fill_diagonal(full_off, 0.0)
    assert _edges(full).sum(axis=1).min() > k, "the fixture must have more than k links per task to prune"
    chosen = np.zeros((t, t), dtype=bool)
    for i in range(t):
        strongest = np.argsort(-full_off[i], kind="stable")[:k]
        chosen[i, strongest] = full_off[i, strongest] > 0
    assert chosen.sum(axis=1).max() <= k
    expected = chosen | chosen.T
    kept = _edges(pruned)
    assert np.array_equal(kept, expected), f"kept edges differ from 'top-{k} of either end' at {np.argwhere(kept != expected)[:3].tolist()}"
    assert np.allclose(pruned[kept], full[kept]), "kept edges keep their unpruned value"
    assert kept.sum() // 2 <= t * k, "at most T*k undirected edges"
    assert kept.sum() < _edges(full).sum(), "top-k removed edges"
    assert np.allclose(pruned, pruned.T) and np.all(np.diag(pruned) == 1.0)


def test_label_prior_top_k_is_symmetrised_so_a_hub_keeps_more_than_k():
    """With top_k=1 every leaf of a star picks the hub; the union keeps all of them (documented: symmetrised)."""
    rng = np.random.default_rng(0)
    hub = (rng.random(500) < 0.5).astype(float)
    leaves = [np.where(rng.random(500) < 0.6 + 0.05 * i, hub, rng.random(500) < 0.5) for i in range(5)]
    y = np.column_stack([hub, *leaves]).astype(float)
    pruned = relation_from_labels(y, "phi", min_support=5, top_k=1)
    kept = _edges(pruned)
    assert kept[0, 1:].all(), "every leaf's strongest link is the hub"
    assert kept[1:, 1:].sum() == 0, "no leaf-leaf links survive top-1"
