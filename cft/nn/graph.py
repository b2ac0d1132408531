"""The normalised task graph A_hat = D^-1/2 (A + I) D^-1/2 that task embeddings are propagated over.

Computed with torch-geometric's `gcn_norm`; it stays differentiable in A so that a `learned`
prior can be trained, and is cached for a constant A (it would otherwise be recomputed at
every training step).
"""

from __future__ import annotations

import torch
from torch_geometric.nn.conv.gcn_conv import gcn_norm
from torch_geometric.utils import dense_to_sparse, to_dense_adj

from cft.nn.constants import FrozenValue


def normalized_adjacency(relation: torch.Tensor) -> torch.Tensor:
    """A_hat = D^-1/2 (A + I) D^-1/2 as a dense [T, T] tensor, differentiable in A."""
    t = relation.size(0)
    off_diagonal = relation * (1.0 - torch.eye(t, dtype=relation.dtype, device=relation.device))
    edge_index, weight = dense_to_sparse(off_diagonal)
    edge_index, weight = gcn_norm(edge_index, weight, num_nodes=t, add_self_loops=True)
    return to_dense_adj(edge_index, edge_attr=weight, max_num_nodes=t)[0]


class NormalizedAdjacencyCache:
    """A_hat of a constant relation matrix, computed once (not at every training step).

    A `FrozenValue`: loading new values into the buffer (load_state_dict copies in place) or
    moving it to another device recomputes it. Learned priors change every step and are not
    cached."""

    def __init__(self):
        self._value = FrozenValue()

    def __call__(self, relation: torch.Tensor) -> torch.Tensor:
        return self._value(lambda: normalized_adjacency(relation), relation)
