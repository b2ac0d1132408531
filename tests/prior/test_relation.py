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
    top = relation_from_labels(np.random.default_rng(0).integers(0, 2, (200, 6)).astype(float), "cosine", min_support=2, top_k=1)
    assert ((top - np.eye(6)) > 0).sum(axis=1).max() <= 6 and np.allclose(top, top.T)
