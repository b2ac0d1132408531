"""cft.nn.adapters: the batched bank and its zero initialisation."""

from __future__ import annotations

import pytest
import torch
from model_kit import tiny_batch, tiny_model

from cft.nn.adapters import ACTIVATIONS, AdapterBank


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
