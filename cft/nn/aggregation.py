"""Sums and means of rows by group: PyG's aggregations, with torch's `index_add_` as the CPU kernel.

A GIN layer sums its messages per atom, out_i = sum_{e : dst_e = i} m_e (m [E, d] -> [N, d]), and
the virtual node and the read-out pool the atoms per molecule (h [N, d] -> [B, d]). PyG computes
these sums as `scatter_add_` with the [E] index broadcast to the rows' shape [E, d]
(`torch_geometric.utils.scatter`). On a CPU torch's `index_add_` takes the [E] index as it is and
adds whole rows, and its gradient is the row gather `index_select` rather than a `gather` with the
broadcast index. On a 2-core CPU the sums over a batch of 64 molecules ran about 3x faster
forward, and the Tox21 recipe's training steps 1.07x and its inference 1.12x faster
(benchmarks/scatter_kernels.py). The rows are added in the same order, so the sums are the same
floats, and so are the gradients.

`IndexAddSum` and `IndexAddMean` are PyG's `SumAggregation` and `MeanAggregation` (the modules a
`MessagePassing` takes as `aggr=`), using `index_add_` for a 2-D input on a CPU and PyG's own
reduction everywhere else (CUDA, where PyG prefers `scatter_add_` and cft has not measured, or a
`ptr` of sorted groups); `sum_pool` and `mean_pool` are PyG's `global_add_pool` and
`global_mean_pool` on them.
"""

from __future__ import annotations

import torch
from torch_geometric.nn.aggr import MeanAggregation, SumAggregation


class _IndexAddOnCpu:
    """`Aggregation.reduce` for "sum" and "mean" over dim 0 of a 2-D CPU tensor by `index_add_`."""

    def reduce(self, x: torch.Tensor, index: torch.Tensor | None = None, ptr: torch.Tensor | None = None, dim_size: int | None = None,
               dim: int = -2, reduce: str = "sum") -> torch.Tensor:
        if not (reduce in ("sum", "mean") and index is not None and ptr is None and x.device.type == "cpu" and x.dim() == 2 and dim in (0, -2)):
            return super().reduce(x, index, ptr, dim_size, dim, reduce)
        out = x.new_zeros(dim_size, x.size(1)).index_add_(0, index, x)  # out_i = sum_{e: index_e = i} x_e, [dim_size, d]
        if reduce == "sum":
            return out
        # as PyG's mean: the sum over max(1, group size), so an empty group is 0
        count = torch.bincount(index, minlength=dim_size).clamp_(min=1).to(x.dtype)
        return out / count.unsqueeze(1)


class IndexAddSum(_IndexAddOnCpu, SumAggregation):
    """PyG's `SumAggregation`, sum_{e: index_e = i} x_e, x [E, d] -> [dim_size, d]; `index_add_` on a CPU."""


class IndexAddMean(_IndexAddOnCpu, MeanAggregation):
    """PyG's `MeanAggregation`, the mean of the rows x_e with index_e = i (0 for none), x [E, d] ->
    [dim_size, d]; `index_add_` on a CPU."""


_SUM = IndexAddSum()
_MEAN = IndexAddMean()


def sum_pool(x: torch.Tensor, batch: torch.Tensor, size: int | None = None) -> torch.Tensor:
    """PyG's `global_add_pool`: per graph the sum of its nodes' rows, x [N, d], batch [N] -> [size, d]."""
    return _SUM(x, batch, dim_size=size)


def mean_pool(x: torch.Tensor, batch: torch.Tensor, size: int | None = None) -> torch.Tensor:
    """PyG's `global_mean_pool`: per graph the mean of its nodes' rows, x [N, d], batch [N] -> [size, d]."""
    return _MEAN(x, batch, dim_size=size)
