"""Regression targets are standardised on the training split and predictions come back in the labels' units."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import run_cli
from model_kit import SMILES, tiny_batch

from cft.nn.backbone import Backbone
from cft.nn.model import CftModel
from cft.spec import BackboneSpec, ModelSpec, PartSpec, concatenated_target_affine


def _regression_model(mean, std) -> CftModel:
    torch.manual_seed(0)
    bb = BackboneSpec(num_layers=2, hidden=16, dropout=0.0)
    names = ["logS", "active"]
    part = PartSpec(name="p", tasks=names, layers=[0, 1], num_adapters=2, rank=3, embed_dim=8)
    spec = ModelSpec(backbone=bb, tasks=names, kinds=["regression", "binary"], parts=[part], target_mean=mean, target_std=std)
    return CftModel(Backbone(bb), spec, [np.eye(2, dtype=np.float32)])


def test_outputs_are_in_label_units_and_the_loss_sees_standardised_targets():
    model = _regression_model([1000.0, 0.0], [10.0, 1.0])
    plain = _regression_model(None, None)
    batch = tiny_batch()
    u = plain(batch)  # the same weights (same seed): the standardised prediction
    out = model(batch)
    assert torch.allclose(out[:, 0], 10.0 * u[:, 0] + 1000.0)
    assert torch.equal(out[:, 1], u[:, 1]), "binary logits untouched"
    y = torch.stack([out[:, 0].detach() + 10.0, torch.ones(len(SMILES))], dim=1)  # one std above the prediction
    plain_y = torch.stack([u[:, 0].detach() + 1.0, torch.ones(len(SMILES))], dim=1)
    assert model.task_loss(out, y).item() == pytest.approx(plain.task_loss(u, plain_y).item(), rel=1e-5)


def test_specs_validate_and_concatenate_the_statistics():
    with pytest.raises(ValueError, match="target_std must be > 0"):
        _regression_model([0.0, 0.0], [0.0, 1.0])
    with pytest.raises(ValueError, match="2 tasks"):
        _regression_model([0.0], [1.0])
    a, b = _regression_model([5.0, 0.0], [2.0, 1.0]).spec, _regression_model(None, None).spec
    assert concatenated_target_affine([a, b]) == {"target_mean": [5.0, 0.0, 0.0, 0.0], "target_std": [2.0, 1.0, 1.0, 1.0]}
    assert concatenated_target_affine([b, b]) == {}


def test_trained_regression_predicts_in_the_labels_units(tmp_path, data_root):
    """ESOL's log-solubility shifted by +1000: standardised, a few epochs already predict around 1000;
    trained raw, the outputs would start near 0 and stay far below (this fails without standardisation)."""
    frame = pd.read_csv(data_root / "delaney-processed.csv").head(400)
    task = "measured log solubility in mols per litre"
    pd.DataFrame({"smiles": frame["smiles"], "logS": frame[task] + 1000.0}).to_csv(tmp_path / "esol.csv", index=False)
    recipe = tmp_path / "esol.yaml"
    recipe.write_text(
        "data: {source: csv, path: esol.csv, split: {method: random}}\n"
        "backbone: {num_layers: 2, hidden: 32, dropout: 0.0}\nadapters: {num_adapters: 2, rank: 4}\n"
        "train: {epochs: 3, batch_size: 32, lr: 0.005, patience: null}\neval: {metric: rmse}\n"
    )
    out = tmp_path / "run"
    result = run_cli("train", recipe, "--data-root", tmp_path, "-o", out)
    assert result.returncode == 0, result.stderr
    summary = json.loads((out / "summary.json").read_text())
    labels = frame[task] + 1000.0
    assert summary["test"]["mean"] < 3 * labels.std(), summary["test"]  # an RMSE on the labels' scale, not ~1000
    assert 0 < summary["test"]["mae"]["mean"] <= summary["test"]["mean"]
    predicted = tmp_path / "pred.csv"
    result = run_cli("predict", out, "--input", tmp_path / "esol.csv", "-o", predicted)
    assert result.returncode == 0, result.stderr
    values = pd.read_csv(predicted)["logS"]
    assert abs(values.mean() - labels.mean()) < labels.std(), (values.describe(), labels.describe())
