"""cft.nn.adapters: the batched bank and its zero initialisation."""

from __future__ import annotations

import pytest
import torch
from model_kit import tiny_batch, tiny_model

from cft.nn.adapters import ACTIVATIONS, MIN_PRODUCT_WIDTH, AdapterBank, BankUpdate, EmbeddingAdapterBank


def per_adapter_loop(bank: AdapterBank, h: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """The definition the batched bank must equal: sum_i alpha_i V_i phi(U_i h), one adapter at a time."""
    act = ACTIVATIONS[bank.activation]
    out = h.new_zeros(h.size(0), bank.out_dim)
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


@pytest.mark.parametrize("k, r", [(1, 10), (3, 4), (2, 12)])
def test_a_linear_bank_is_one_low_rank_matrix_and_others_are_not(k, r):
    """low_rank_factors(s, g) = (A, B) with x A^T B^T = g * s * sum_i f_i(x) for a linear bank with
    every weight 1 (A's rows and B's columns past K*r zero, P = product_width); None where the update
    is no single matrix: another phi, input dropout while training, per-node weights, the
    embeddings' bank (which reads atom features)."""
    torch.manual_seed(8)
    bank = AdapterBank(k, r, 16, "identity", out_dim=24)
    torch.nn.init.normal_(bank.V)
    x, gain = torch.randn(30, 16), torch.rand(24) + 0.5
    down, up = bank.low_rank_factors(0.7, gain)
    assert down.shape == (bank.product_width, 16) and up.shape == (24, bank.product_width)
    torch.testing.assert_close(x @ (up @ down).t(), gain * bank(x, None, 0.7))
    torch.testing.assert_close(BankUpdate(bank, None, 0.7).low_rank_factors(gain)[1], up)
    assert BankUpdate(bank, torch.ones(30, k), 0.7).low_rank_factors(gain) is None
    assert AdapterBank(k, r, 16, "gelu").low_rank_factors() is None
    dropped = AdapterBank(k, r, 16, "identity", dropout=0.1)
    assert dropped.low_rank_factors() is None and dropped.eval().low_rank_factors() is not None
    assert EmbeddingAdapterBank(k, r, [5, 6], 24, "identity").low_rank_factors() is None


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


@pytest.mark.parametrize(("k", "r", "routed", "activation"), [(1, 10, False, "identity"), (3, 4, True, "gelu"), (1, 3, False, "tanh"), (2, 8, True, "relu")])
def test_narrow_banks_pad_their_products_with_the_same_update_and_gradients(k, r, routed, activation):
    """A bank of K*r < 16 hidden units multiplies with zero units appended up to 16 (faster products
    on CPU); the update and the gradients of U, V and the input are those of the unpadded
    definition, and U, V keep their shapes. A bank of 16 or more is not padded."""
    torch.manual_seed(7)
    bank = AdapterBank(k, r, 20, activation, out_dim=36)
    torch.nn.init.normal_(bank.V)
    assert bank.product_width == max(k * r, MIN_PRODUCT_WIDTH) and bank._stacked_v().shape == (36, bank.product_width)
    alpha = torch.softmax(torch.randn(50, k), dim=-1) if routed else None
    base, gain = torch.randn(50, 36), torch.rand(36) + 0.5
    h = torch.randn(50, 20, requires_grad=True)
    reference = base + gain * 0.6 * per_adapter_loop(bank, h, alpha if routed else torch.ones(50, k))
    reference.square().sum().backward()
    expected = (bank.U.grad.clone(), bank.V.grad.clone(), h.grad.clone())
    bank.zero_grad()
    h.grad = None
    result = bank.add_to(base.clone(), h, alpha, 0.6, gain)
    result.square().sum().backward()
    assert torch.allclose(result, reference, atol=1e-5)
    assert bank.U.grad.shape == bank.U.shape and bank.V.grad.shape == bank.V.shape
    for got, want in zip((bank.U.grad, bank.V.grad, h.grad), expected):
        assert torch.allclose(got, want, atol=1e-4)
    assert AdapterBank(4, 4, 20).product_width == 16 and AdapterBank(8, 8, 20).product_width == 64


def test_a_narrow_embedding_bank_pads_its_lookup_and_keeps_its_update():
    """The atom embeddings' bank (a lookup, then the V product) pads its units too: its update is
    V phi(U m(x)) of the unpadded definition."""
    torch.manual_seed(8)
    vocabulary = [5, 3, 4]
    bank = EmbeddingAdapterBank(1, 10, vocabulary, out_dim=12, activation="identity")
    torch.nn.init.normal_(bank.V)
    x = torch.stack([torch.randint(0, n, (30,)) for n in vocabulary], dim=1)
    multi_hot = torch.zeros(30, sum(vocabulary))
    multi_hot.scatter_(1, x + bank.offsets, 1.0)
    expected = (multi_hot @ bank.U[0].t()) @ bank.V[0].t()
    assert bank.product_width == MIN_PRODUCT_WIDTH
    assert torch.allclose(bank(x, None), expected, atol=1e-5)


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
