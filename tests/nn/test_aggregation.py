"""cft.nn.aggregation: PyG's sum and mean aggregations with `index_add_` as the CPU kernel."""

from __future__ import annotations

import pytest
import torch
from torch_geometric.data import Batch, Data
from torch_geometric.nn import global_add_pool, global_mean_pool
from torch_geometric.nn.aggr import MeanAggregation, SumAggregation

from cft.nn.aggregation import IndexAddMean, IndexAddSum, mean_pool, sum_pool
from cft.nn.backbone import Backbone, GINLayer, OgbGCNConv
from cft.spec import BackboneSpec


def _rows_and_groups(rows: int = 200, width: int = 37, groups: int = 23) -> tuple[torch.Tensor, torch.Tensor]:
    """Random rows and an unsorted group index that leaves some groups empty (the last three)."""
    torch.manual_seed(rows + width)
    return torch.randn(rows, width, dtype=torch.float64).float().requires_grad_(), torch.randint(0, groups - 3, (rows,))


@pytest.mark.parametrize(("ours", "pygs"), [(IndexAddSum, SumAggregation), (IndexAddMean, MeanAggregation)])
def test_the_sums_means_and_their_gradients_are_pygs_to_the_bit(ours, pygs):
    x, index = _rows_and_groups()
    grad = torch.randn(23, x.size(1))
    values, gradients = [], []
    for module in (ours(), pygs()):
        out = module(x, index, dim_size=23)
        (g,) = torch.autograd.grad(out, x, grad)
        values.append(out)
        gradients.append(g)
    assert torch.equal(values[0], values[1])  # the rows are added in the same order
    assert torch.equal(gradients[0], gradients[1])
    assert values[0][-3:].abs().sum() == 0  # empty groups: 0, also for the mean


def test_the_pools_are_pygs_global_pools_to_the_bit():
    x, batch = _rows_and_groups(rows=90, width=300, groups=11)
    assert torch.equal(sum_pool(x, batch, size=11), global_add_pool(x, batch, size=11))
    assert torch.equal(mean_pool(x, batch, size=11), global_mean_pool(x, batch, size=11))
    assert mean_pool(x, batch, size=11).shape == (11, 300)


def test_other_shapes_and_sorted_groups_take_pygs_own_reduction(monkeypatch):
    """The index_add_ path is for a 2-D CPU input grouped by an index; a 3-D input or a `ptr`
    of sorted groups goes to PyG's reduction (here proven by making the fast path fail)."""
    x = torch.randn(4, 6, 5)
    index = torch.tensor([0, 2, 2, 1, 0, 1])
    monkeypatch.setattr(torch.Tensor, "index_add_", lambda *args: pytest.fail("index_add_ taken"))
    assert torch.equal(IndexAddSum()(x, index, dim=1, dim_size=3), SumAggregation()(x, index, dim=1, dim_size=3))
    rows = torch.randn(6, 3)
    ptr = torch.tensor([0, 2, 6])
    assert torch.equal(IndexAddMean()(rows, ptr=ptr), MeanAggregation()(rows, ptr=ptr))


def test_the_backbones_message_sums_and_pools_use_it_and_compute_pygs_values(monkeypatch):
    """The GIN and GCN layers aggregate with IndexAddSum; a GIN-VN backbone's output equals the
    same weights with PyG's own sum aggregation and global pools, to the bit."""
    import cft.nn.backbone as module

    torch.manual_seed(0)
    backbone = Backbone(BackboneSpec(arch="gin", virtual_node=True, num_layers=2, hidden=16, dropout=0.0)).eval()
    assert isinstance(backbone.convs[0], GINLayer) and isinstance(backbone.convs[0].conv.aggr_module, IndexAddSum)
    assert isinstance(OgbGCNConv(8).aggr_module, IndexAddSum)
    data = Batch.from_data_list([
        Data(x=torch.randint(0, 2, (n, 9)), edge_index=torch.tensor([[i for i in range(n - 1)] + [i + 1 for i in range(n - 1)],
                                                                      [i + 1 for i in range(n - 1)] + [i for i in range(n - 1)]]),
             edge_attr=torch.randint(0, 2, (2 * (n - 1), 3)))
        for n in (3, 2, 6)
    ])
    ours = backbone(data)
    for layer in backbone.convs:
        monkeypatch.setattr(layer.conv, "aggr_module", SumAggregation())
    monkeypatch.setitem(module.POOLING_FUNCTIONS, "mean", global_mean_pool)
    monkeypatch.setattr(module, "sum_pool", global_add_pool)
    assert torch.equal(ours, backbone(data))
