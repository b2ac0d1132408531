"""cft.nn.frozen: the frozen backbone's Linear products in bf16 inside `bf16_frozen_products`."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cft.nn.adapters import AdapterBank, BankUpdate
from cft.nn.backbone import Backbone, GINLayer
from cft.nn.frozen import BACKWARD, ROW_MULTIPLE, bf16_frozen_products, frozen_linear, frozen_linear_low_rank, merges_low_rank, padded_bf16_product
from cft.spec import BackboneSpec

# bf16 keeps 8 bits of mantissa: inputs rounded by up to 2^-9 relative, products summed in fp32
BF16_RTOL = 2e-2


def _close(actual: torch.Tensor, expected: torch.Tensor, rtol: float = BF16_RTOL) -> None:
    """Close relative to the tensor's scale (single entries near zero carry an absolute error)."""
    assert actual.dtype == expected.dtype == torch.float32
    assert (actual - expected).abs().max() <= rtol * expected.abs().max()


def test_the_switch_is_scoped_to_its_block_and_outside_it_the_product_is_exactly_f_linear():
    torch.manual_seed(0)
    x, weight, bias = torch.randn(37, 16), torch.randn(24, 16), torch.randn(24)
    with bf16_frozen_products():
        with bf16_frozen_products(False):
            assert torch.equal(frozen_linear(x, weight, bias), F.linear(x, weight, bias))
        inside = frozen_linear(x, weight, bias)
    assert torch.equal(frozen_linear(x, weight, bias), F.linear(x, weight, bias))  # the block ended
    assert not torch.equal(inside, F.linear(x, weight, bias))  # it did compute in bf16
    _close(inside, F.linear(x, weight, bias))


@pytest.mark.parametrize("rows", [1, ROW_MULTIPLE - 1, ROW_MULTIPLE, ROW_MULTIPLE + 1, 5 * ROW_MULTIPLE + 7])
def test_padding_the_rows_changes_neither_the_shape_nor_the_values_of_the_product(rows):
    torch.manual_seed(rows)
    a, b, bias = torch.randn(rows, 40), torch.randn(40, 24).bfloat16(), torch.randn(24).bfloat16()
    out = padded_bf16_product(a, b, bias)
    assert out.shape == (rows, 24) and out.dtype == torch.float32
    # the same rounding of the inputs, unpadded: row i of a product depends on row i of `a` only
    expected = torch.addmm(bias.float(), a.bfloat16().float(), b.float())
    torch.testing.assert_close(out, expected, rtol=1e-2, atol=1e-2)
    assert torch.equal(padded_bf16_product(a, b), padded_bf16_product(torch.cat([a, torch.randn(3, 40)]), b)[:rows])


def test_frozen_weights_give_the_input_gradient_in_bf16_and_trained_weights_are_left_to_f_linear():
    torch.manual_seed(1)
    weight, bias = torch.randn(30, 20), torch.randn(30)
    x = torch.randn(50, 20, requires_grad=True)
    upstream = torch.randn(50, 30)
    expected_grad = upstream @ weight
    with bf16_frozen_products():
        out = frozen_linear(x, weight, bias)
    out.backward(upstream)
    _close(x.grad, expected_grad)
    assert not torch.equal(x.grad, expected_grad)

    trained = nn.Linear(20, 30)  # requires_grad: the product stays fp32, weight gradients flow
    with bf16_frozen_products():
        out = frozen_linear(x, trained.weight, trained.bias)
    assert torch.equal(out, trained(x))
    out.sum().backward()
    assert trained.weight.grad is not None


def test_backward_mode_keeps_the_forward_exactly_fp32_and_rounds_only_the_input_gradient():
    torch.manual_seed(5)
    weight, bias = torch.randn(30, 20), torch.randn(30)
    x = torch.randn(50, 20, requires_grad=True)
    upstream = torch.randn(50, 30)
    with bf16_frozen_products(BACKWARD):
        out = frozen_linear(x, weight, bias)
        assert torch.equal(frozen_linear(x.detach(), weight, bias), F.linear(x, weight, bias))  # no gradient wanted
    assert torch.equal(out, F.linear(x, weight, bias))  # the values (and so the loss) are fp32's
    out.backward(upstream)
    expected_grad = upstream @ weight
    assert not torch.equal(x.grad, expected_grad)  # the backward product ran in bf16 ...
    # ... exactly as the padded bf16 product of the same inputs
    assert torch.equal(x.grad, padded_bf16_product(upstream, weight.bfloat16()))
    _close(x.grad, expected_grad)


@pytest.mark.parametrize("mode", [True, BACKWARD])
def test_an_owner_keeps_the_bf16_copies_until_its_weights_change(mode):
    """With `owner`, the bf16 copies of the weights are made once and kept: the same values as
    converting at every call, and a weight written in place is converted anew."""
    torch.manual_seed(6)
    linear = nn.Linear(20, 30).requires_grad_(False)
    x = torch.randn(50, 20, requires_grad=True)
    upstream = torch.randn(50, 30)

    def run(owner):
        x.grad = None
        with bf16_frozen_products(mode):
            out = frozen_linear(x, linear.weight, linear.bias, owner=owner)
        out.backward(upstream)
        return out.detach(), x.grad.clone()

    for _ in range(2):  # the second call reads the kept copies
        for kept, converted in zip(run(linear), run(None)):
            assert torch.equal(kept, converted)
    with torch.no_grad():
        linear.weight.mul_(2.0)
    for kept, converted in zip(run(linear), run(None)):
        assert torch.equal(kept, converted)


@pytest.mark.parametrize("setting", ["forward", 1.5, None])
def test_the_switch_takes_true_false_or_backward_only(setting):
    with pytest.raises(ValueError, match="backward"):
        with bf16_frozen_products(setting):
            pass


def _frozen_gin_layer(hidden: int = 24) -> tuple[GINLayer, nn.BatchNorm1d]:
    torch.manual_seed(2)
    layer, norm = GINLayer(hidden), nn.BatchNorm1d(hidden)
    for module in (layer.conv.nn[1], norm):  # running statistics far from (0, 1), as after pretraining
        module.running_mean.uniform_(-1, 1)
        module.running_var.uniform_(0.5, 2)
        module.weight.data.uniform_(0.5, 1.5)
    layer.eval(), norm.eval()
    for p in [*layer.parameters(), *norm.parameters()]:
        p.requires_grad_(False)
    return layer, norm


def _molecule_batch(hidden: int = 24, nodes: int = 45, edges: int = 90):
    torch.manual_seed(3)
    x = torch.randn(nodes, hidden, requires_grad=True)
    edge_index = torch.randint(0, nodes, (2, edges))
    edge_attr = torch.stack([torch.randint(0, n, (edges,)) for n in (5, 6, 2)], dim=1)
    return x, edge_index, edge_attr


@pytest.mark.parametrize("with_adapter", [True, False])
@pytest.mark.parametrize("mode", [True, BACKWARD])
def test_a_frozen_gin_layer_in_bf16_products_matches_fp32_values_and_adapter_gradients(with_adapter, mode):
    hidden = 24
    layer, norm = _frozen_gin_layer(hidden)
    x, edge_index, edge_attr = _molecule_batch(hidden)
    banks = (AdapterBank(1, 4, hidden, "identity", out_dim=2 * hidden), AdapterBank(1, 4, 2 * hidden, "identity", out_dim=hidden))
    for bank in banks:
        nn.init.normal_(bank.V, std=0.1)  # non-zero updates

    def run(bf16: bool | str):
        for p in [x, *banks[0].parameters(), *banks[1].parameters()]:
            p.grad = None
        adapter = (BankUpdate(banks[0], None, 1.0), BankUpdate(banks[1], None, 1.0)) if with_adapter else None
        with bf16_frozen_products(bf16):
            out = layer(x, edge_index, edge_attr, adapter, "mlp-both", norm=norm)
        out.pow(2).sum().backward()
        grads = [x.grad.clone()] + ([banks[0].U.grad.clone(), banks[1].V.grad.clone()] if with_adapter else [])
        return out.detach(), grads

    (fp32, fp32_grads), (bf16, bf16_grads) = run(False), run(mode)
    if mode == BACKWARD:  # the forward pass is fp32's, bit for bit; only the gradients moved
        assert torch.equal(bf16, fp32) and not torch.equal(bf16_grads[0], fp32_grads[0])
    else:
        assert not torch.equal(bf16, fp32)
    _close(bf16, fp32)
    for got, expected in zip(bf16_grads, fp32_grads):
        _close(got, expected, rtol=5e-2)  # through two products and a ReLU mask: a little more rounding


def _low_rank_case():
    torch.manual_seed(7)
    weight, bias = torch.randn(30, 20), torch.randn(30)
    down, up = (0.3 * torch.randn(16, 20)).requires_grad_(), (0.3 * torch.randn(30, 16)).requires_grad_()
    return torch.randn(50, 20, requires_grad=True), weight, bias, down, up


@pytest.mark.parametrize("mode", [False, BACKWARD])
def test_a_merged_low_rank_update_gives_the_values_and_gradients_of_the_update_computed_apart(mode):
    """x (W + B A)^T + b against x W^T + b + (x A^T) B^T: the same values and the same gradients of
    A and B within float rounding; dL/dx through the merged weight, in bf16 in `BACKWARD` mode."""
    x, weight, bias, down, up = _low_rank_case()
    upstream = torch.randn(50, 30)

    def gradients(out):
        for t in (x, down, up):
            t.grad = None
        out.backward(upstream)
        return [t.grad.clone() for t in (x, down, up)]

    with bf16_frozen_products(mode):
        merged = frozen_linear_low_rank(x, weight, bias, down, up)
    merged_grads = gradients(merged)
    apart = F.linear(x, weight, bias) + (x @ down.t()) @ up.t()
    apart_grads = gradients(apart)
    torch.testing.assert_close(merged, apart)
    torch.testing.assert_close(merged_grads[1:], apart_grads[1:])
    if mode == BACKWARD:
        assert torch.equal(merged_grads[0], padded_bf16_product(upstream, torch.addmm(weight, up, down).detach().bfloat16()))
        _close(merged_grads[0], apart_grads[0])
    else:
        torch.testing.assert_close(merged_grads[0], apart_grads[0])


def test_only_frozen_weights_under_fp32_forward_products_are_merged():
    """Not inside `bf16_frozen_products(True)` (an update far smaller than W would round away in a
    bf16 W + B A), not under autocast, not for weights that train."""
    x, weight, bias, _, _ = _low_rank_case()
    assert merges_low_rank(x, weight, bias)
    with bf16_frozen_products(BACKWARD):
        assert merges_low_rank(x, weight, bias)
    with bf16_frozen_products(True):
        assert not merges_low_rank(x, weight, bias)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not merges_low_rank(x, weight, bias)
    assert not merges_low_rank(x, weight.clone().requires_grad_(), bias)
    assert not merges_low_rank(x.double(), weight.double(), bias.double())


@pytest.mark.parametrize("routed", [False, True])
def test_a_gin_layer_merges_linear_banks_and_computes_the_rest_apart(routed, monkeypatch):
    """A frozen GIN layer's linear banks without per-node weights run merged into their Linears
    (`frozen_linear_low_rank`); with per-node weights apart. Either way the values and gradients of
    the update computed apart, within float rounding."""
    import cft.nn.backbone as backbone_module

    hidden = 24
    layer, norm = _frozen_gin_layer(hidden)
    x, edge_index, edge_attr = _molecule_batch(hidden)
    banks = (AdapterBank(2, 4, hidden, "identity", out_dim=2 * hidden), AdapterBank(2, 4, 2 * hidden, "identity", out_dim=hidden))
    for bank in banks:
        nn.init.normal_(bank.V, std=0.1)
    alpha = torch.softmax(torch.randn(x.size(0), 2), dim=-1) if routed else None

    def run():
        for p in [x, *banks[0].parameters(), *banks[1].parameters()]:
            p.grad = None
        out = layer(x, edge_index, edge_attr, (BankUpdate(banks[0], alpha, 0.5), BankUpdate(banks[1], alpha, 0.5)), "mlp-both", norm=norm)
        out.pow(2).sum().backward()
        return out, [x.grad.clone(), banks[0].U.grad.clone(), banks[0].V.grad.clone(), banks[1].U.grad.clone(), banks[1].V.grad.clone()]

    out, grads = run()
    assert (type(out.grad_fn).__name__ == "_FrozenLinearLowRankBackward") is not routed
    monkeypatch.setattr(backbone_module, "merges_low_rank", lambda *args: False)
    apart, apart_grads = run()
    assert type(apart.grad_fn).__name__ != "_FrozenLinearLowRankBackward"
    torch.testing.assert_close(out, apart, rtol=1e-5, atol=1e-5)
    for got, expected in zip(grads, apart_grads):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_full_fine_tuning_stays_fp32_inside_the_block():
    spec = BackboneSpec(arch="gin", num_layers=2, hidden=16, dropout=0.0)
    torch.manual_seed(4)
    backbone = Backbone(spec).train()
    x, edge_index, edge_attr = _molecule_batch(16)
    h, vn = backbone.encode(torch.randint(0, 2, (45, 9)), 2)  # every OGB atom feature has >= 2 values
    batch = (torch.arange(45) >= 20).long()  # two molecules: the virtual node's norms need two in training
    outside, _ = backbone.layer(0, h, vn, edge_index, edge_attr, batch)
    with bf16_frozen_products():
        inside, _ = backbone.layer(0, h, vn, edge_index, edge_attr, batch)
    assert torch.equal(inside, outside)


@pytest.mark.parametrize("training", [True, False])
def test_a_gin_layer_without_adapter_computes_what_pyg_s_gineconv_and_the_norm_compute(training):
    """One path for every GIN layer: in training mode (batch statistics) the values of PyG's
    GINEConv forward followed by the norm; in eval mode (norms folded) the same within rounding."""
    layer, norm = _frozen_gin_layer()
    layer.train(training), norm.train(training)
    x, edge_index, edge_attr = _molecule_batch()
    from cft.nn.backbone import bond_embeddings

    expected = norm(layer.conv(x, edge_index, bond_embeddings(layer.bond_encoder, edge_attr)))
    torch.testing.assert_close(layer(x, edge_index, edge_attr, norm=norm), expected, rtol=1e-5, atol=1e-5)


class _LowRankWrapped(nn.Module):
    """What PEFT's LoRA makes of a Linear: a module holding the frozen base layer (its `.weight`
    still readable through the wrapper) whose forward adds B A x. Reading the weight alone would
    skip the update."""

    def __init__(self, base: nn.Linear, rank: int = 3):
        super().__init__()
        self.base_layer = base
        self.lora_A = nn.Linear(base.in_features, rank, bias=False)
        self.lora_B = nn.Linear(rank, base.out_features, bias=False)
        nn.init.normal_(self.lora_B.weight)  # not LoRA's zero start: the update must show

    @property
    def weight(self) -> torch.Tensor:
        return self.base_layer.weight

    @property
    def bias(self) -> torch.Tensor:
        return self.base_layer.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base_layer(x) + self.lora_B(self.lora_A(x))


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("bf16", [False, True])
def test_a_wrapped_or_hooked_mlp_linear_is_called_as_a_module(training, bf16):
    """A GIN MLP Linear that another library wrapped (PEFT's LoRA) or hooked runs its own forward:
    the layer computes PyG's GINEConv through those modules, then the norm, in training mode and
    in eval mode (no folding, no bf16 product from the bare weight)."""
    from cft.nn.backbone import bond_embeddings

    layer, norm = _frozen_gin_layer()
    layer.conv.nn[0] = _LowRankWrapped(layer.conv.nn[0])
    layer.conv.nn[3].register_forward_hook(lambda module, inputs, output: output * 2.0)
    layer.train(training), norm.train(training)
    x, edge_index, edge_attr = _molecule_batch()
    expected = norm(layer.conv(x, edge_index, bond_embeddings(layer.bond_encoder, edge_attr)))
    plain = norm(layer.conv.nn[3].forward(F.relu(layer.conv.nn[1](layer.conv.nn[0].base_layer(
        layer.aggregate(x, edge_index, edge_attr))))))
    assert not torch.allclose(expected, plain, atol=1e-3)  # the wrapper and the hook both change the output
    with bf16_frozen_products(bf16):
        got = layer(x, edge_index, edge_attr, norm=norm)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
