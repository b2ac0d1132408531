"""cft.nn.constants: values of frozen tensors computed once, recomputed when a source changes; a
frozen backbone's folded norms and bond tables kept between forwards, never stale."""

from __future__ import annotations

import torch
from ogb.graphproppred.mol_encoder import BondEncoder

from cft.nn.backbone import Backbone, bond_embeddings
from cft.nn.constants import FrozenValue, frozen_value
from cft.spec import BackboneSpec


def _counting(source: torch.Tensor):
    calls = []

    def compute():
        calls.append(1)
        return source * 2

    return compute, calls


def test_a_frozen_value_is_computed_once_until_its_source_changes():
    source = torch.arange(4.0)
    compute, calls = _counting(source)
    value = FrozenValue()
    first = value(compute, source)
    assert value(compute, source) is first and len(calls) == 1
    source.add_(1)  # written in place: its version counter moves
    assert torch.equal(value(compute, source), torch.arange(4.0) * 2 + 2) and len(calls) == 2
    moved = source.clone()  # another storage (as after .to(device)) with the same values
    value(compute, moved)
    assert len(calls) == 3


def test_a_source_that_requires_grad_is_recomputed_every_call_with_its_gradient():
    source = torch.arange(4.0, requires_grad=True)
    compute, calls = _counting(source)
    value = FrozenValue()
    out = value(compute, source)
    value(compute, source)
    assert len(calls) == 2 and out.requires_grad
    out.sum().backward()
    assert torch.equal(source.grad, torch.full((4,), 2.0))


def test_nothing_is_kept_inside_inference_mode():
    source = torch.arange(4.0)
    compute, calls = _counting(source)
    value = FrozenValue()
    with torch.inference_mode():
        value(compute, source)
    kept = value(compute, source)  # computed afresh outside: a normal tensor, usable by autograd
    assert len(calls) == 2 and not kept.is_inference()


def test_values_are_per_module_and_per_name():
    a, b = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    for m in (a, b):
        m.requires_grad_(False)
    assert frozen_value(a, "w", lambda: a.weight * 1, a.weight) is frozen_value(a, "w", lambda: a.weight * 3, a.weight)
    assert not torch.equal(frozen_value(a, "v", lambda: a.weight * 3, a.weight), a.weight)
    assert torch.equal(frozen_value(b, "w", lambda: b.weight * 1, b.weight), b.weight)


def test_a_frozen_bond_table_follows_new_weights():
    """Kept between calls, and after load_state_dict (an in-place copy) the new encoder's sums."""
    torch.manual_seed(0)
    encoder, other = BondEncoder(8).requires_grad_(False), BondEncoder(8)
    edge_attr = torch.stack([torch.randint(0, n, (40,)) for n in (5, 6, 2)], dim=1)
    first = bond_embeddings(encoder, edge_attr)
    assert torch.equal(bond_embeddings(encoder, edge_attr), first)
    encoder.load_state_dict(other.state_dict())
    assert torch.equal(bond_embeddings(encoder, edge_attr), other(edge_attr))


def _molecules(n: int = 3):
    from torch_geometric.data import Batch, Data

    torch.manual_seed(1)
    graphs = []
    for atoms in (5, 7, 4)[:n]:
        src = torch.arange(atoms - 1)
        edge_index = torch.cat([torch.stack([src, src + 1]), torch.stack([src + 1, src])], dim=1)
        graphs.append(Data(x=torch.randint(0, 2, (atoms, 9)), edge_index=edge_index, edge_attr=torch.randint(0, 2, (edge_index.size(1), 3))))
    return Batch.from_data_list(graphs)


def _frozen_eval_backbone(seed: int) -> Backbone:
    torch.manual_seed(seed)
    backbone = Backbone(BackboneSpec(arch="gin", virtual_node=True, num_layers=2, hidden=16, dropout=0.0))
    for norm in [m for m in backbone.modules() if isinstance(m, torch.nn.BatchNorm1d)]:
        norm.running_mean.uniform_(-1, 1)
        norm.running_var.uniform_(0.5, 2)
    return backbone.requires_grad_(False).eval()


def test_a_frozen_backbone_keeps_no_stale_constants():
    """A frozen eval-mode backbone's output, computed twice (the second from kept constants), then
    after another backbone's weights and statistics are loaded into it: always the output of a
    fresh backbone holding the same weights."""
    batch = _molecules()
    backbone, other = _frozen_eval_backbone(2), _frozen_eval_backbone(3)
    first = backbone(batch)
    assert torch.equal(backbone(batch), first)
    backbone.load_state_dict(other.state_dict())
    torch.testing.assert_close(backbone(batch), other(batch), rtol=0, atol=0)
    assert not torch.allclose(backbone(batch), first)
