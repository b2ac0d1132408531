"""cft.nn.graph: the normalised task graph."""

from __future__ import annotations

import torch

from cft.nn.graph import normalized_adjacency


def test_normalisation_matches_the_formula():
    a = torch.tensor([[0, 2.0, 0.5], [2.0, 0, 0], [0.5, 0, 0]])
    d = (a + torch.eye(3)).sum(dim=1)
    expected = (a + torch.eye(3)) / torch.sqrt(d[:, None] * d[None, :])
    assert torch.allclose(normalized_adjacency(a), expected)
