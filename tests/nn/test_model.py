"""cft.nn.model: freezing, gradients, masked losses, the paper's parameter budget."""

from __future__ import annotations

import numpy as np
import torch
from model_kit import tiny_batch, tiny_model

from cft.nn.backbone import Backbone
from cft.nn.model import CftModel
from cft.spec import BackboneSpec


def test_frozen_backbone_receives_no_gradient_and_adapters_do():
    model = tiny_model()
    model.train()
    batch = tiny_batch()
    logits, routes = model.forward_with_routes(batch)
    loss = model.task_loss(logits, torch.randint(0, 2, logits.shape).float()) + model.router.regularizer(routes)
    loss.backward()
    assert all(p.grad is None for p in model.backbone.parameters())
    assert model.adapters["0"].V.grad is not None and model.adapters["0"].V.grad.abs().sum() > 0
    assert model.router.parts[0].task_embed.grad is not None
    assert model.router.parts[0].query.weight.grad is not None
    assert not model.backbone.training, "a frozen backbone stays in eval mode"


def test_unfrozen_backbone_is_trained():
    model = tiny_model(freeze=False)
    model.train()
    logits, _ = model.forward_with_routes(tiny_batch())
    model.task_loss(logits, torch.ones_like(logits)).backward()
    assert all(p.grad is not None for p in model.backbone.parameters() if p.requires_grad)


def test_masked_losses_ignore_missing_labels():
    model = tiny_model()
    logits = torch.tensor([[0.0, 2.0, -1.0]])
    y = torch.tensor([[1.0, float("nan"), 0.0]])
    expected = torch.nn.functional.binary_cross_entropy_with_logits(torch.tensor([0.0, -1.0]), torch.tensor([1.0, 0.0]))
    assert torch.allclose(model.task_loss(logits, y), expected)
    model.is_binary[:] = torch.tensor([True, True, False])
    y = torch.tensor([[1.0, float("nan"), 3.0]])
    bce = torch.nn.functional.binary_cross_entropy_with_logits(torch.tensor(0.0), torch.tensor(1.0))
    assert torch.allclose(model.task_loss(logits, y), (bce + 16.0) / 2)


def test_molpcba_recipe_fits_the_papers_parameter_budget():
    from conftest import REPO

    from cft.recipe.load import load_recipe
    from cft.training.build import model_spec

    recipe = load_recipe(REPO / "recipes" / "molpcba.yaml")

    class FakeData:
        name, tasks, kinds = "pcba", [f"t{i}" for i in range(128)], ["binary"] * 128

    spec = model_spec(recipe, FakeData(), BackboneSpec.of(recipe.backbone))
    model = CftModel(Backbone(spec.backbone), spec, [np.eye(128, dtype=np.float32)])
    counts = model.parameter_counts()
    assert counts["total"] <= 4_800_000
    assert counts["trainable"] / counts["total"] < 0.15


def test_one_adapter_per_layer_trains_no_router_and_computes_what_a_routed_one_does():
    """K = 1: every route is 1, so the recipe's part is `uniform` and holds LoRA's weights exactly."""
    from conftest import REPO

    from cft.recipe.load import load_recipe
    from cft.spec import ModelSpec
    from cft.training.build import model_spec

    recipe = load_recipe(REPO / "recipes" / "tox21.yaml")
    assert recipe.adapters.num_adapters == 1 and recipe.routing.mode == "routed"

    class FakeData:
        name, tasks, kinds = "tox21", [f"t{i}" for i in range(12)], ["binary"] * 12

    spec = model_spec(recipe, FakeData(), BackboneSpec.of(recipe.backbone))
    assert spec.parts[0].mode == "uniform"
    model = CftModel(Backbone(spec.backbone), spec, [np.eye(12, dtype=np.float32)])
    assert not [n for n in model.state_dict() if n.startswith("router.parts.0.") and n != "router.parts.0.relation"]
    head = sum(p.numel() for p in model.head.parameters())
    # rank 10 beside both Linears (300 -> 600 -> 300) of five GIN MLPs and of the four virtual-node
    # MLPs (the last layer updates no virtual node), and on the atom encoder's 174 embedding rows
    # (174 -> 300): 166,740, under 5% of the backbone's 3,336,305
    trainable = model.parameter_counts()["trainable"] - head
    assert trainable == (5 + 4) * 2 * 10 * (300 + 600) + 10 * (174 + 300) == 166_740
    assert trainable < 0.05 * sum(p.numel() for p in model.backbone.parameters())

    # the same adapter weights routed: identical logits (the router's output is 1 for every molecule)
    for readout, placement in (("mixture", "output"), ("task", "mlp-both")):
        base = tiny_model(k=1, mode="routed")
        routed_spec = ModelSpec.model_validate({**base.spec.model_dump(), "readout": readout, "placement": placement})
        routed = CftModel(base.backbone, routed_spec, [np.eye(3, dtype=np.float32)])
        for p in routed.parameters():
            if p.requires_grad:
                p.data.normal_(0.0, 0.3)
        uniform_spec = ModelSpec.model_validate({**routed_spec.model_dump(), "parts": [{**routed_spec.parts[0].model_dump(), "mode": "uniform"}]})
        uniform = CftModel(routed.backbone, uniform_spec, [np.eye(3, dtype=np.float32)])
        missing, unexpected = uniform.load_state_dict(routed.state_dict(), strict=False)
        assert not missing and unexpected and all(".task_embed" in k or ".keys." in k or ".query." in k for k in unexpected)
        routed.eval(), uniform.eval()
        batch = tiny_batch()
        assert torch.allclose(routed(batch), uniform(batch), atol=1e-6), readout
        assert not torch.allclose(routed(batch), base.eval()(batch), atol=1e-3)  # the adapters were moved: the check can fail
