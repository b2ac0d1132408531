"""A tiny model and batch for the unit tests of cft.nn (six molecules, 2 layers x 16)."""

from __future__ import annotations

import numpy as np
import torch
from ogb.utils import smiles2graph
from torch_geometric.data import Batch, Data

from cft.nn.backbone import Backbone
from cft.nn.model import CftModel
from cft.spec import BackboneSpec, ModelSpec, PartSpec

SMILES = ["CCO", "c1ccccc1O", "CC(=O)Nc1ccc(O)cc1", "ClCCCl", "CCN(CC)CC", "O=C(O)c1ccccc1"]


def tiny_batch() -> Batch:
    graphs = []
    for s in SMILES:
        g = smiles2graph(s)
        graphs.append(Data(x=torch.from_numpy(g["node_feat"]).long(), edge_index=torch.from_numpy(g["edge_index"]).long(),
                           edge_attr=torch.from_numpy(g["edge_feat"]).long(), y=torch.zeros(1, 3)))
    return Batch.from_data_list(graphs)


def tiny_model(arch="gin", tasks=3, layers=(0, 1), k=4, rank=3, freeze=True, relation=None, **part_kw) -> CftModel:
    torch.manual_seed(0)
    spec_bb = BackboneSpec(arch=arch, num_layers=2, hidden=16, dropout=0.0)
    names = [f"t{i}" for i in range(tasks)]
    part = PartSpec(name="p", tasks=names, layers=list(layers), num_adapters=k, rank=rank, embed_dim=8, **part_kw)
    spec = ModelSpec(backbone=spec_bb, tasks=names, kinds=["binary"] * tasks, parts=[part])
    rel = relation if relation is not None else np.eye(tasks, dtype=np.float32)
    return CftModel(Backbone(spec_bb), spec, [rel], freeze_backbone=freeze)
