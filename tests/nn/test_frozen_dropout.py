"""`frozen_dropout`: a frozen backbone whose layers drop out while the adapters train. BatchNorm keeps
its pretraining statistics, evaluation drops nothing (so a bundle predicts as if trained without
it), the backbone gets no gradient, and the frozen-prefix cache is off."""

from __future__ import annotations

import numpy as np
import torch

from cft.nn.backbone import Backbone
from cft.nn.model import CftModel
from cft.spec import BackboneSpec, ModelSpec, PartSpec
from tests.model_kit import tiny_batch


def _model(frozen_dropout: float) -> CftModel:
    torch.manual_seed(0)
    spec_bb = BackboneSpec(arch="gin", num_layers=2, hidden=16, dropout=0.0)
    names = ["t0", "t1", "t2"]
    part = PartSpec(name="p", tasks=names, layers=[0, 1], num_adapters=4, rank=3, embed_dim=8)
    spec = ModelSpec(backbone=spec_bb, tasks=names, kinds=["binary"] * 3, parts=[part])
    model = CftModel(Backbone(spec_bb), spec, [np.eye(3, dtype=np.float32)], frozen_dropout=frozen_dropout)
    with torch.no_grad():
        for bank in model.adapters.values():
            bank.V.normal_(0, 0.1)  # V starts at zero: make the adapters act
    return model


def _batchnorm_state(model: CftModel) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.backbone.state_dict().items() if "running" in k or "num_batches" in k}


def test_training_drops_out_in_the_frozen_backbone_and_keeps_its_batchnorm_statistics():
    model = _model(0.5).train()
    assert model.backbone.training and model.backbone.dropout == 0.5
    assert all(not m.training for m in model.backbone.modules() if isinstance(m, torch.nn.BatchNorm1d))
    before = _batchnorm_state(model)
    batch = tiny_batch()
    torch.manual_seed(1)
    first = model(batch)
    torch.manual_seed(2)
    second = model(batch)
    assert not torch.allclose(first, second), "another dropout mask gives other logits"
    for key, value in _batchnorm_state(model).items():
        assert torch.equal(value, before[key]), f"{key} changed in training mode"
    first.sum().backward()
    assert all(p.grad is None for p in model.backbone.parameters()), "the frozen backbone gets no gradient"
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.adapters.parameters())


def test_evaluation_is_the_model_without_frozen_dropout():
    dropped, plain = _model(0.5), _model(0.0)
    plain.load_state_dict(dropped.state_dict())
    batch = tiny_batch()
    dropped.train()
    dropped.eval()  # back from training mode: nothing drops
    assert not dropped.backbone.training
    torch.testing.assert_close(dropped(batch), plain.eval()(batch))


def test_frozen_dropout_turns_the_prefix_cache_off():
    assert _model(0.0).prefix_layer() == 0
    assert _model(0.5).prefix_layer() is None


def test_a_trained_backbone_ignores_frozen_dropout():
    torch.manual_seed(0)
    spec_bb = BackboneSpec(arch="gin", num_layers=2, hidden=16, dropout=0.2)
    part = PartSpec(name="p", tasks=["t0"], layers=[], num_adapters=1, rank=1, embed_dim=8)
    spec = ModelSpec(backbone=spec_bb, tasks=["t0"], kinds=["binary"], parts=[part])
    model = CftModel(Backbone(spec_bb), spec, [np.eye(1, dtype=np.float32)], freeze_backbone=False, frozen_dropout=0.5)
    assert model.frozen_dropout == 0.0 and model.backbone.dropout == 0.2  # its own rate, and its BatchNorm trains
    model.train()
    assert all(m.training for m in model.backbone.modules() if isinstance(m, torch.nn.BatchNorm1d))
