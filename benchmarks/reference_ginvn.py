"""A plain PyG training loop of the OGB example GIN-VN, written from the libraries' public API.

This is the reference cft's full fine-tuning path is compared with: the OGB molecule example's
GIN with virtual node (`examples/graphproppred/mol/conv.py` + `gnn.py`: GINConv with a
BondEncoder per layer, BatchNorm, ReLU, dropout, virtual node MLPs, mean pooling, a linear
head), a list of PyG `Data` objects from `ogb.utils.smiles2graph`, PyG's DataLoader, Adam and a
masked BCE loss. No cft code is used here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from ogb.graphproppred.mol_encoder import AtomEncoder, BondEncoder
from ogb.utils import smiles2graph
from torch import nn
from torch_geometric.data import Data
from torch_geometric.nn import MessagePassing, global_add_pool, global_mean_pool


class GINConv(MessagePassing):
    def __init__(self, emb_dim: int):
        super().__init__(aggr="add")
        self.mlp = nn.Sequential(nn.Linear(emb_dim, 2 * emb_dim), nn.BatchNorm1d(2 * emb_dim), nn.ReLU(), nn.Linear(2 * emb_dim, emb_dim))
        self.eps = nn.Parameter(torch.Tensor([0]))
        self.bond_encoder = BondEncoder(emb_dim=emb_dim)

    def forward(self, x, edge_index, edge_attr):
        edge_embedding = self.bond_encoder(edge_attr)
        return self.mlp((1 + self.eps) * x + self.propagate(edge_index, x=x, edge_attr=edge_embedding))

    def message(self, x_j, edge_attr):
        return F.relu(x_j + edge_attr)


class GINVirtualNode(nn.Module):
    def __init__(self, num_tasks: int, num_layer: int = 5, emb_dim: int = 300, drop_ratio: float = 0.5):
        super().__init__()
        self.num_layer, self.drop_ratio = num_layer, drop_ratio
        self.atom_encoder = AtomEncoder(emb_dim)
        self.virtualnode_embedding = nn.Embedding(1, emb_dim)
        nn.init.constant_(self.virtualnode_embedding.weight.data, 0)
        self.convs = nn.ModuleList([GINConv(emb_dim) for _ in range(num_layer)])
        self.batch_norms = nn.ModuleList([nn.BatchNorm1d(emb_dim) for _ in range(num_layer)])
        self.mlp_virtualnode_list = nn.ModuleList(
            [
                nn.Sequential(nn.Linear(emb_dim, 2 * emb_dim), nn.BatchNorm1d(2 * emb_dim), nn.ReLU(), nn.Linear(2 * emb_dim, emb_dim), nn.BatchNorm1d(emb_dim), nn.ReLU())
                for _ in range(num_layer - 1)
            ]
        )
        self.graph_pred_linear = nn.Linear(emb_dim, num_tasks)

    def forward(self, data):
        x, edge_index, edge_attr, batch = data.x, data.edge_index, data.edge_attr, data.batch
        vn = self.virtualnode_embedding(torch.zeros(batch[-1].item() + 1, dtype=edge_index.dtype, device=edge_index.device))
        h_list = [self.atom_encoder(x)]
        for layer in range(self.num_layer):
            h_list[layer] = h_list[layer] + vn[batch]
            h = self.batch_norms[layer](self.convs[layer](h_list[layer], edge_index, edge_attr))
            if layer == self.num_layer - 1:
                h = F.dropout(h, self.drop_ratio, training=self.training)
            else:
                h = F.dropout(F.relu(h), self.drop_ratio, training=self.training)
            h_list.append(h)
            if layer < self.num_layer - 1:
                vn = F.dropout(self.mlp_virtualnode_list[layer](global_add_pool(h_list[layer], batch) + vn), self.drop_ratio, training=self.training)
        return self.graph_pred_linear(global_mean_pool(h_list[-1], batch))


def data_list(smiles: list[str], labels) -> list[Data]:
    out = []
    for s, y in zip(smiles, labels):
        g = smiles2graph(s)
        out.append(Data(x=torch.from_numpy(g["node_feat"]), edge_index=torch.from_numpy(g["edge_index"]),
                        edge_attr=torch.from_numpy(g["edge_feat"]), y=torch.as_tensor(y, dtype=torch.float32).view(1, -1)))
    return out


def train_steps(model, loader, steps: int) -> int:
    """The OGB example's training step; returns the number of graphs seen."""
    optimizer = torch.optim.Adam(model.parameters(), lr=0.001)
    criterion = nn.BCEWithLogitsLoss()
    model.train()
    seen = 0
    for step, batch in enumerate(loader):
        if step == steps:
            break
        pred = model(batch)
        is_labeled = batch.y == batch.y
        loss = criterion(pred.to(torch.float32)[is_labeled], batch.y.to(torch.float32)[is_labeled])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        seen += batch.num_graphs
    return seen
