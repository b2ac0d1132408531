"""cft.nn.backbone: the bond embeddings of a layer as one lookup."""

from __future__ import annotations

import torch
from ogb.graphproppred.mol_encoder import BondEncoder

from cft.nn.backbone import bond_embeddings


def test_bond_embeddings_are_the_bond_encoders_to_the_bit():
    """One lookup in the table of every bond-feature combination gives OGB's BondEncoder sums
    exactly, and the same gradients on its embeddings."""
    torch.manual_seed(4)
    encoder = BondEncoder(32)
    edge_attr = torch.stack([torch.randint(0, n, (500,)) for n in (5, 6, 2)], dim=1).to(torch.uint8)
    weights = torch.randn(500, 32)
    ours = bond_embeddings(encoder, edge_attr)
    (ours * weights).sum().backward()
    grads = [e.weight.grad.clone() for e in encoder.bond_embedding_list]
    encoder.zero_grad()
    theirs = encoder(edge_attr.long())
    (theirs * weights).sum().backward()
    assert torch.equal(ours, theirs)
    assert all(torch.allclose(g, e.weight.grad, atol=1e-5) for g, e in zip(grads, encoder.bond_embedding_list))
    assert bond_embeddings(encoder, edge_attr[:0]).shape == (0, 32)
