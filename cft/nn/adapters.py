"""Banks of K low-rank adapters f_i(z) = V_i phi(U_i z), computed batched.

Node states become h <- h + s * sum_i alpha_i f_i(h). The bank stacks every U_i into one
(K*r x d) matrix and every V_i into one (d x K*r) matrix, so the whole bank is two matrix
products whatever K is. Because phi acts elementwise and V is linear, the per-node routing
weights alpha_i can scale the r hidden units of adapter i between the two products.
V is zero-initialised, so training starts at the backbone (exactly on the layer outputs; within
float rounding in the GIN MLP, where the frozen BatchNorms are folded into the Linears).
With phi the identity and every weight 1 the bank's update is one low-rank matrix,
s sum_i V_i U_i (`low_rank_factors`), which the GIN and virtual-node MLPs merge into the frozen
Linear beside the bank (`cft.nn.frozen.frozen_linear_low_rank`).

A bank narrower than `MIN_PRODUCT_WIDTH` hidden units (K*r < 16, e.g. one adapter of rank 10)
computes its update with zero units appended up to that width: zero rows of U, zero columns of V,
so the same update and the same gradients for U and V. On CPU, torch's fp32 products with fewer
than 16 output columns (the backward's dL/da = dL/dy V, [N, out] x [out, K*r], and the weight
gradient h^T dL/dz) ran two to three times slower than at 16 on the AMD EPYC of BENCHMARKS.md
("Narrow banks"); at 12 columns and above the padding measured level.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

MIN_PRODUCT_WIDTH = 16
"""Banks narrower than this many hidden units (K*r) are padded with zero units to it in their products."""

ACTIVATIONS = {
    "identity": lambda z: z,
    "relu": F.relu,
    "gelu": F.gelu,
    "tanh": torch.tanh,
}


def _zero_columns(t: torch.Tensor, n: int) -> torch.Tensor:
    """t [M, c] with n zero columns appended, [M, c + n]; t itself when n = 0 (F.pad would copy it)."""
    return F.pad(t, (0, n)) if n else t


def _zero_rows(t: torch.Tensor, n: int) -> torch.Tensor:
    """t [M, c] with n zero rows appended, [M + n, c]; t itself when n = 0."""
    return F.pad(t, (0, 0, 0, n)) if n else t


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

    @property
    def product_width(self) -> int:
        """The hidden units of the bank's products: K*r, or MIN_PRODUCT_WIDTH when narrower."""
        return max(self.num_adapters * self.rank, MIN_PRODUCT_WIDTH)

    def activations(self, h: torch.Tensor) -> torch.Tensor:
        """phi(U_i h) of every adapter: h [M, d] -> [M, K, r] (one matrix product)."""
        k, r = self.num_adapters, self.rank
        return self._hidden_units(h, k * r).view(-1, k, r)

    def _hidden_units(self, h: torch.Tensor, width: int) -> torch.Tensor:
        """phi(U h) of the stacked U [K*r, d] with zero rows appended up to `width`: h [M, d] ->
        [M, width], the columns past K*r zero (phi(0) = 0 for every activation)."""
        if self.dropout and self.training:
            h = F.dropout(h, self.dropout, training=True)
        kr = self.num_adapters * self.rank
        u = _zero_rows(self.U.reshape(kr, self.hidden), width - kr)  # [width, d]
        return ACTIVATIONS[self.activation](h @ u.t())

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
        return self._weighted_activations(h, alpha, scale) @ self._stacked_v().t()  # [N, out_dim], P = product_width

    def add_to(self, out: torch.Tensor, h: torch.Tensor, alpha: torch.Tensor | None, scale: float = 1.0, gain: torch.Tensor | None = None) -> torch.Tensor:
        """out + g * s * sum_i alpha_i f_i(h), accumulated into `out` [N, out_dim] in place by one
        matrix product (out.addmm_(a, (g V)^T), a [N, K*r] the weighted activations, g [out_dim] a
        per-output gain, None: 1): no [N, out_dim] update is made and no separate sum runs.

        `out` must be a fresh tensor that autograd does not keep (a Linear's output: its backward
        keeps the inputs, not the result). g lets a frozen eval-mode BatchNorm after the sum be
        folded into the Linear before it (`GINLayer.forward`): BN(y + u) = g*y + c + g*u."""
        v = self._stacked_v()  # [out_dim, P]
        if gain is not None:
            v = v * gain.unsqueeze(1)
        a = self._weighted_activations(h, alpha, scale)
        return out.addmm_(a.to(out.dtype), v.t().to(out.dtype))  # the dtypes of a bf16-autocast Linear's output

    def low_rank_factors(self, scale: float = 1.0, gain: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(A [P, hidden], B [out_dim, P]) with B A = g s sum_i V_i U_i, the bank's update as one
        low-rank matrix, when it is one: phi the identity, every routing weight 1 and no input
        dropout in training; None otherwise. P = `product_width` (zero rows of A and columns of B
        past K*r, so the products on them keep their width); g [out_dim] a per-output gain (None: 1).
        A Linear beside the bank reading its input then computes x (W + B A)^T + b in one product
        (`cft.nn.frozen.frozen_linear_low_rank`)."""
        if self.activation != "identity" or (self.dropout and self.training):
            return None
        kr = self.num_adapters * self.rank
        up = self._stacked_v() * scale
        if gain is not None:
            up = up * gain.unsqueeze(1)
        return _zero_rows(self.U.reshape(kr, self.hidden), self.product_width - kr), up

    def _weighted_activations(self, h: torch.Tensor, alpha: torch.Tensor | None, scale: float) -> torch.Tensor:
        """s alpha_i phi(U_i h) of every adapter, flattened and zero-padded: [N, d] -> [N, P],
        P = `product_width` (the columns past K*r zero)."""
        k, r, width = self.num_adapters, self.rank, self.product_width
        z = self._hidden_units(h, width)
        if alpha is not None:
            z = _zero_columns((z[:, : k * r].view(-1, k, r) * alpha.unsqueeze(-1)).flatten(1), width - k * r)
        return z * scale if scale != 1.0 else z

    def _stacked_v(self) -> torch.Tensor:
        """Every V_i side by side, zero columns appended: [out_dim, P], column block i = V_i."""
        kr = self.num_adapters * self.rank
        return _zero_columns(self.V.permute(1, 0, 2).reshape(self.out_dim, kr), self.product_width - kr)

    def expert_updates(self, activations: torch.Tensor) -> torch.Tensor:
        """Each adapter's own output V_i a_i from its activations: [M, K, r] -> [M, K, d].

        With M = nodes this is f_i(h) per node; with M = graphs and activations pooled first, it is
        pool(f_i(h)) for a linear pooling (V_i is linear), at K*r instead of K*d values per node."""
        return torch.einsum("mkr,kdr->mkd", activations, self.V)


class EmbeddingAdapterBank(AdapterBank):
    """A bank beside the atom encoder: adapters on the embeddings every layer reads.

    OGB's AtomEncoder sums one embedding per atom feature, e(x) = sum_f E_f[x_f], which is a
    linear map of the atom's multi-hot vector m(x) [n], n = sum_f n_f (feature f's values at
    offsets o_f): e(x) = W m(x) with W = [E_0^T ... E_{F-1}^T] [d, n]. The bank reads m(x), so
    adapter i adds f_i(x) = V_i phi(U_i m(x)), U_i [r, n], V_i [d, r]: with phi = identity a
    low-rank update V_i U_i of W, LoRA on the encoder's tables seen as one Linear. U_i m(x) is
    computed as F column lookups, sum_f U_i[:, o_f + x_f]; no multi-hot tensor is built.

    Input dropout drops whole features of an atom (entries of m(x)), scaling the rest by 1/(1-p).
    """

    def __init__(self, num_adapters: int, rank: int, vocabulary: list[int], out_dim: int, activation: str = "gelu", dropout: float = 0.0):
        """`vocabulary`: n_f, the number of values of each atom feature (the encoder's table sizes)."""
        super().__init__(num_adapters, rank, sum(vocabulary), activation, dropout, out_dim=out_dim)
        offsets = torch.tensor([0, *vocabulary[:-1]], dtype=torch.long).cumsum(0)
        self.register_buffer("offsets", offsets, persistent=False)

    def low_rank_factors(self, scale: float = 1.0, gain: torch.Tensor | None = None) -> None:
        """None: the bank reads integer atom features, not a Linear's input, so nothing merges it."""
        return None

    def _hidden_units(self, x: torch.Tensor, width: int) -> torch.Tensor:
        """phi(U m(x)) of the stacked U, zero columns appended up to `width`: x [N, F] integer atom
        features -> [N, width] (a lookup, not a product: only the V product gains by the width)."""
        kr = self.num_adapters * self.rank
        table = self.U.permute(2, 0, 1).reshape(self.hidden, kr)  # [n, K*r]: row o_f + v is value v of feature f
        rows = F.embedding(x.long() + self.offsets, table)  # [N, F, K*r]
        if self.dropout and self.training:
            rows = rows * F.dropout(rows.new_ones(rows.shape[:2]).unsqueeze(-1), self.dropout, training=True)
        return _zero_columns(ACTIVATIONS[self.activation](rows.sum(1)), width - kr)


class BankUpdate:
    """One bank's update with fixed routing weights, as the GIN MLP's placements take it:
    `update.add_to(out, z, gain)` adds gain * s * sum_i alpha_i f_i(z) into `out` in place
    (`AdapterBank.add_to`)."""

    def __init__(self, bank: AdapterBank, alpha: torch.Tensor | None, scale: float):
        self.bank, self.alpha, self.scale = bank, alpha, scale

    def add_to(self, out: torch.Tensor, h: torch.Tensor, gain: torch.Tensor | None = None) -> torch.Tensor:
        return self.bank.add_to(out, h, self.alpha, self.scale, gain)

    def low_rank_factors(self, gain: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The update as (A, B) to merge into the Linear beside it (`AdapterBank.low_rank_factors`),
        or None: per-node routing weights make it no single matrix."""
        return self.bank.low_rank_factors(self.scale, gain) if self.alpha is None else None
