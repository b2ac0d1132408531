"""cft.nn.adapters: the batched bank and its zero initialisation."""

from __future__ import annotations

import pytest
import torch
from model_kit import tiny_batch, tiny_model

from cft.nn.adapters import ACTIVATIONS, AdapterBank, BankUpdate


def per_adapter_loop(bank: AdapterBank, h: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """The definition the batched bank must equal: sum_i alpha_i V_i phi(U_i h), one adapter at a time."""
    act = ACTIVATIONS[bank.activation]
    out = torch.zeros_like(h)
    for i in range(bank.num_adapters):
        out = out + alpha[:, i : i + 1] * (act(h @ bank.U[i].t()) @ bank.V[i].t())
    return out


@pytest.mark.parametrize("arch", ["gin", "gcn"])
def test_zero_initialised_adapters_leave_the_backbone_unchanged_to_the_bit(arch):
    model = tiny_model(arch=arch)
    batch = tiny_batch()
    model.eval()
    with torch.no_grad():
        adapted = model(batch)
        plain = model.head(model.backbone(batch))
    assert torch.equal(adapted, plain)


def test_batched_bank_equals_per_adapter_reference():
    torch.manual_seed(1)
    for activation in ("identity", "relu", "gelu", "tanh"):
        bank = AdapterBank(5, 3, 16, activation)
        torch.nn.init.normal_(bank.V)
        h, alpha = torch.randn(40, 16), torch.softmax(torch.randn(40, 5), dim=-1)
        assert torch.allclose(bank(h, alpha), per_adapter_loop(bank, h, alpha), atol=1e-5)


def test_bank_weights_and_scale_act_on_the_hidden_units():
    """bank(h, alpha, s) = s * sum_i alpha_i f_i(h) (the weights and s multiply the K*r hidden units,
    not the outputs); alpha None means every weight 1, without the product."""
    torch.manual_seed(2)
    bank = AdapterBank(3, 4, 16, "gelu")
    torch.nn.init.normal_(bank.V)
    h, alpha = torch.randn(30, 16), torch.softmax(torch.randn(30, 3), dim=-1)
    assert torch.allclose(bank(h, alpha, 0.7), 0.7 * per_adapter_loop(bank, h, alpha), atol=1e-5)
    ones = torch.ones(30, 3)
    assert torch.equal(bank(h, None), bank(h, ones))
    assert torch.allclose(bank(h, None, 2.0), 2.0 * per_adapter_loop(bank, h, ones), atol=1e-5)
    assert not torch.allclose(bank(h, None), bank(h, alpha), atol=1e-3)  # the weights do act


def test_add_to_accumulates_the_scaled_update_in_place():
    """bank.add_to(out, h, alpha, s, g) = out + g * s * sum_i alpha_i f_i(h), written into `out`, with
    the gradients of the out-of-place sum (BankUpdate passes the same through)."""
    torch.manual_seed(6)
    bank = AdapterBank(3, 4, 16, "relu", out_dim=24)
    torch.nn.init.normal_(bank.V)
    h, alpha, gain = torch.randn(30, 16), torch.softmax(torch.randn(30, 3), dim=-1), torch.rand(24) + 0.5
    base = torch.randn(30, 24)
    expected = base + gain * bank(h, alpha, 0.7)
    expected.square().sum().backward()
    grads = (bank.U.grad.clone(), bank.V.grad.clone())
    bank.zero_grad()
    out = base.clone()
    result = BankUpdate(bank, alpha, 0.7).add_to(out, h, gain)
    assert result.data_ptr() == out.data_ptr()  # in place: no [N, out_dim] update made
    result.square().sum().backward()
    assert torch.allclose(result, expected, atol=1e-5)
    assert torch.allclose(grads[0], bank.U.grad, atol=1e-4) and torch.allclose(grads[1], bank.V.grad, atol=1e-4)
    assert torch.allclose(bank.add_to(base.clone(), h, None), base + bank(h, None), atol=1e-5)


def test_one_uncomposed_adapter_per_layer_weighs_every_node_1():
    """A one-part model with one adapter per layer skips the router's per-node weight (exactly 1 in
    the method, 1 within rounding in its arithmetic): the same logits as weighting by the router."""
    torch.manual_seed(3)
    model = tiny_model(k=1)
    for bank in model.adapters.values():
        torch.nn.init.normal_(bank.V)
    assert all(model._single_route(layer) for layer in model.router.layers)
    batch = tiny_batch()
    model.eval()
    with torch.no_grad():
        skipped = model(batch)
        model._single_route = lambda layer: False  # the router's own weights, as for a composition
        weighted = model(batch)
    assert torch.allclose(skipped, weighted, atol=1e-5)
    assert not torch.equal(skipped, model.head(model.backbone(batch)))  # the adapters act
