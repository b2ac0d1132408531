"""The pretraining loop's batches: slices of the compact store in the seeded order of the PyG
collation they replaced, so a backbone pretrained before the change is the one made after it."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch
from torch_geometric.data import Batch

from cft.data.graphs import GraphDataset, featurise
from cft.training.pretrain import _loader
from tests.model_kit import SMILES

MORE = [*SMILES, "C1CCCCC1", "N#Cc1ccccc1", "OCC(O)CO", "c1ccc2ccccc2c1", "CCCCCCCCCC"]


def test_pretraining_batches_are_the_seeded_pyg_batches_of_the_indices():
    store, valid, _, _ = featurise(MORE, use_cache=False)
    assert valid.all()
    y = torch.randn(len(store), 2)
    dataset = SimpleNamespace(store=store, y=y)
    indices = np.array([7, 1, 4, 9, 2, 0, 5])  # a split's rows, not 0..n-1
    for epoch in (0, 1):
        batches = list(_loader(dataset, indices, batch_size=3, seed=4, epoch=epoch))
        # the order the PyG loader used: torch.randperm of the positions, seeded by (seed, epoch)
        order = torch.randperm(len(indices), generator=torch.Generator().manual_seed(4 * 1000 + epoch)).tolist()
        expected = GraphDataset(store, y, [int(indices[i]) for i in order])
        assert [b.num_graphs for b in batches] == [3, 3, 1]
        for n, batch in enumerate(batches):
            pyg = Batch.from_data_list([expected[i] for i in range(3 * n, min(3 * n + 3, len(expected)))])
            for key in ("x", "edge_index", "edge_attr", "y", "batch"):
                assert torch.equal(getattr(batch, key), getattr(pyg, key)), (epoch, n, key)
    assert not torch.equal(list(_loader(dataset, indices, 3, 4, 0))[0].y, list(_loader(dataset, indices, 3, 4, 1))[0].y)  # reshuffled per epoch
