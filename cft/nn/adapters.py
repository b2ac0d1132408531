"""Banks of K low-rank adapters f_i(z) = V_i phi(U_i z), computed batched.

Node states become h <- h + s * sum_i alpha_i f_i(h). The bank stacks every U_i into one
(K*r x d) matrix and every V_i into one (d x K*r) matrix, so the whole bank is two matrix
products whatever K is. Because phi acts elementwise and V is linear, the per-node routing
weights alpha_i can scale the r hidden units of adapter i between the two products.
V is zero-initialised, so training starts exactly at the backbone.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

ACTIVATIONS = {
    "identity": lambda z: z,
    "relu": F.relu,
    "gelu": F.gelu,
    "tanh": torch.tanh,
}


class AdapterBank(nn.Module):
    def __init__(self, num_adapters: int, rank: int, hidden: int, activation: str = "gelu", dropout: float = 0.0, out_dim: int | None = None):
        """f_i: R^hidden -> R^out_dim (out_dim defaults to hidden): `hidden` is the width the bank reads."""
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown adapter activation {activation!r}")
        self.num_adapters, self.rank, self.hidden = num_adapters, rank, hidden
        self.out_dim = out_dim or hidden  # f_i: R^hidden -> R^out_dim (hidden = out_dim but for `mlp-hidden` and `mlp-out`)
        self.activation = activation
        self.dropout = dropout
        self.U = nn.Parameter(torch.empty(num_adapters, rank, hidden))
        self.V = nn.Parameter(torch.zeros(num_adapters, self.out_dim, rank))
        # LoRA's initialisation of the down projection (kaiming-uniform, a=sqrt(5)) per adapter
        bound = 1.0 / math.sqrt(hidden)
        nn.init.uniform_(self.U, -bound, bound)

    def activations(self, h: torch.Tensor) -> torch.Tensor:
        """phi(U_i h) of every adapter: h [M, d] -> [M, K, r] (one matrix product)."""
        if self.dropout and self.training:
            h = F.dropout(h, self.dropout, training=True)
        k, r, d = self.num_adapters, self.rank, self.hidden
        z = h @ self.U.reshape(k * r, d).t()  # [M, K*r]
        return ACTIVATIONS[self.activation](z).view(-1, k, r)

    def own_activations(self, x: torch.Tensor) -> torch.Tensor:
        """phi(U_i x_i) when adapter i reads its own input x_i: x [M, K, hidden] -> [M, K, r] (one
        batched product; the experts of a second bank each read what their first-bank expert made)."""
        if self.dropout and self.training:
            x = F.dropout(x, self.dropout, training=True)
        return ACTIVATIONS[self.activation](torch.einsum("mkc,krc->mkr", x, self.U))

    def forward(self, h: torch.Tensor, alpha: torch.Tensor | None, scale: float = 1.0) -> torch.Tensor:
        """h: [N, d] node states; alpha: [N, K] per-node adapter weights (None: all 1); scale: s.
        Returns the update s * sum_i alpha_i f_i(h) = sum_i V_i (s alpha_i phi(U_i h)), [N, out_dim]:
        weights and scale multiply the K*r hidden units, not the out_dim outputs."""
        k, r = self.num_adapters, self.rank
        z = self.activations(h)
        if alpha is not None:
            z = z * alpha.unsqueeze(-1)
        if scale != 1.0:
            z = z * scale
        return z.reshape(-1, k * r) @ self.V.permute(1, 0, 2).reshape(self.out_dim, k * r).t()  # [N, out_dim]

    def expert_updates(self, activations: torch.Tensor) -> torch.Tensor:
        """Each adapter's own output V_i a_i from its activations: [M, K, r] -> [M, K, d].

        With M = nodes this is f_i(h) per node; with M = graphs and activations pooled first, it is
        pool(f_i(h)) for a linear pooling (V_i is linear), at K*r instead of K*d values per node."""
        return torch.einsum("mkr,kdr->mkd", activations, self.V)
