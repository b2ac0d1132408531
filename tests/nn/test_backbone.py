"""cft.nn.backbone: the bond embeddings of a layer as one lookup; a GIN layer with adapters in its MLP."""

from __future__ import annotations

import pytest
import torch
from ogb.graphproppred.mol_encoder import BondEncoder

from cft.nn.adapters import AdapterBank, BankUpdate
from cft.nn.backbone import GINLayer, _virtual_node_mlp, bond_embeddings


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


def _random_statistics(norm: torch.nn.BatchNorm1d) -> torch.nn.BatchNorm1d:
    norm.running_mean.normal_()
    norm.running_var.uniform_(0.3, 3.0)
    torch.nn.init.normal_(norm.weight)
    torch.nn.init.normal_(norm.bias)
    return norm


def _layer_and_graph(hidden: int = 16, nodes: int = 30, edges: int = 80):
    """A GIN layer whose MLP BatchNorm holds non-trivial statistics and affine weights, and a graph."""
    torch.manual_seed(5)
    layer = GINLayer(hidden)
    _random_statistics(layer.conv.nn[1])
    x = torch.randn(nodes, hidden)
    edge_index = torch.randint(0, nodes, (2, edges))
    edge_attr = torch.stack([torch.randint(0, n, (edges,)) for n in (5, 6, 2)], dim=1).to(torch.uint8)
    return layer, x, edge_index, edge_attr


def _reference(layer: GINLayer, z: torch.Tensor, into_hidden, beside_second) -> torch.Tensor:
    """The GIN MLP with its updates, module by module: W_2 u + b_2 + f'(u), u = ReLU(BN(W_1 z + b_1 + f(z)))."""
    first, norm, act, second = layer.conv.nn
    pre = first(z) + (into_hidden(z) if into_hidden else 0)
    u = act(norm(pre))
    return second(u) + (beside_second(u) if beside_second else 0)


@pytest.mark.parametrize("placement", ["mlp", "mlp-hidden", "mlp-out", "mlp-both"])
@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize("with_norm", [False, True])
def test_gin_layer_with_adapters_equals_its_mlp_module_by_module(placement, training, with_norm):
    """In eval mode the MLP's BatchNorm is folded into the first Linear, the layer's own (`norm`)
    into the second, and the adapters' updates are accumulated into the Linears' outputs in place;
    in training mode (batch statistics) the norms run as they are. Either way: the output and the
    adapters' gradients of the plain module-by-module computation, within float rounding."""
    layer, x, edge_index, edge_attr = _layer_and_graph()
    outer = _random_statistics(torch.nn.BatchNorm1d(16)) if with_norm else None
    layer.train(training)
    if outer is not None:
        outer.train(training)
    d = 16
    banks = {"hidden": AdapterBank(2, 3, d, "gelu", out_dim=2 * d), "out": AdapterBank(2, 3, 2 * d, "identity", out_dim=d),
             "mlp": AdapterBank(2, 3, d, "tanh")}
    for bank in banks.values():
        torch.nn.init.normal_(bank.V)
    alpha = torch.softmax(torch.randn(x.size(0), 2), dim=-1)
    update = {name: BankUpdate(bank, alpha, 0.7) for name, bank in banks.items()}
    adapter = {"mlp": update["mlp"], "mlp-hidden": update["hidden"], "mlp-out": update["out"], "mlp-both": (update["hidden"], update["out"])}[placement]
    plain = {name: (lambda x, bank=bank: bank(x, alpha, 0.7)) for name, bank in banks.items()}  # the out-of-place updates
    ours = layer(x, edge_index, edge_attr, adapter, placement, norm=outer)
    (ours * torch.linspace(-1, 1, d)).sum().backward()
    grads = {name: (b.U.grad.clone() if b.U.grad is not None else None) for name, b in banks.items()}
    for bank in banks.values():
        bank.zero_grad(set_to_none=True)
    z = layer.aggregate(x, edge_index, edge_attr)
    if placement == "mlp":
        theirs = layer.conv.nn(z) + plain["mlp"](z)
    else:
        into, beside = {"mlp-hidden": (plain["hidden"], None), "mlp-out": (None, plain["out"]), "mlp-both": (plain["hidden"], plain["out"])}[placement]
        theirs = _reference(layer, z, into, beside)
    if outer is not None:
        theirs = outer(theirs)
    (theirs * torch.linspace(-1, 1, d)).sum().backward()
    assert torch.allclose(ours, theirs, atol=1e-4, rtol=1e-5)
    assert any(g is not None for g in grads.values())
    for name, bank in banks.items():
        if grads[name] is None:
            assert bank.U.grad is None
        else:
            assert torch.allclose(grads[name], bank.U.grad, atol=1e-4, rtol=1e-4)


def test_gin_layer_with_adapters_runs_under_bf16_autocast():
    """The in-place accumulation casts the adapters' fp32 factors to the bf16 Linear output's dtype."""
    layer, x, edge_index, edge_attr = _layer_and_graph()
    layer.eval()
    hidden, out = AdapterBank(1, 4, 16, "identity", out_dim=32), AdapterBank(1, 4, 32, "identity", out_dim=16)
    torch.nn.init.normal_(hidden.V)
    torch.nn.init.normal_(out.V)
    adapter = (BankUpdate(hidden, None, 1.0), BankUpdate(out, None, 1.0))
    outer = _random_statistics(torch.nn.BatchNorm1d(16)).eval()
    exact = layer(x, edge_index, edge_attr, adapter, "mlp-both", norm=outer)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = layer(x, edge_index, edge_attr, adapter, "mlp-both", norm=outer)
    low.float().sum().backward()
    assert low.dtype == torch.bfloat16
    assert hidden.V.grad is not None and out.V.grad is not None
    assert torch.allclose(low.float(), exact, atol=0.1 * exact.abs().max().item())


@pytest.mark.parametrize("training", [False, True])
def test_the_virtual_node_mlp_with_folded_norms_equals_its_module(training):
    """Eval mode: both BatchNorms folded into the Linears before them, the same values and input
    gradient within float rounding; training mode (batch statistics): the module's own path."""
    torch.manual_seed(5)
    d = 12
    mlp = torch.nn.Sequential(
        torch.nn.Linear(d, 2 * d), torch.nn.BatchNorm1d(2 * d), torch.nn.ReLU(), torch.nn.Linear(2 * d, d), torch.nn.BatchNorm1d(d), torch.nn.ReLU(),
    )
    for norm in (mlp[1], mlp[4]):  # statistics and affine far from the defaults, as after pretraining
        norm.running_mean.uniform_(-1, 1)
        norm.running_var.uniform_(0.5, 2)
        norm.weight.data.uniform_(0.5, 1.5)
        norm.bias.data.uniform_(-0.5, 0.5)
    mlp.train(training)
    x = torch.randn(7, d, requires_grad=True)
    expected = mlp(x)
    (expected_grad,) = torch.autograd.grad(expected.pow(2).sum(), x)
    got = _virtual_node_mlp(mlp, x)
    (got_grad,) = torch.autograd.grad(got.pow(2).sum(), x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got_grad, expected_grad, rtol=1e-5, atol=1e-5)
