"""`cft fingerprint`: pooled adapted representations per molecule (per part of a composed bundle), row order kept, invalid rows flagged."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import assert_user_error, run_cli, run_cli_inprocess
from model_kit import tiny_batch, tiny_model

from cft.nn.model import CftModel


def _with_readout(model: CftModel, readout: str) -> CftModel:
    spec = model.spec.model_copy(update={"readout": readout})
    torch.manual_seed(0)
    return CftModel(model.backbone, spec, [np.eye(len(spec.tasks), dtype=np.float32)], freeze_backbone=True).eval()


@pytest.mark.parametrize("readout", ["mixture", "task"])
def test_the_representation_is_what_the_heads_read(readout):
    """mixture: logits = W rep + c for every task; task (one task): rep is that task's own r_t(x)."""
    model = _with_readout(tiny_model(tasks=3 if readout == "mixture" else 1), readout)
    batch = tiny_batch()
    with torch.no_grad():
        logits = model(batch)
    reps = model.representations(batch)
    assert reps.shape == (1, 6, 16) and not reps.requires_grad
    torch.testing.assert_close(model.head(reps[0]).detach(), logits, rtol=1e-5, atol=1e-5)


def test_a_task_groups_representation_is_the_mean_of_its_tasks_reads():
    """task read-out, 3 tasks with different gates: the representation is z_0 + sum_k Rbar_k D_k,
    whose head logits are the mean of the tasks' own reads (linear in the gates)."""
    model = _with_readout(tiny_model(tasks=3), "task")
    batch = tiny_batch()
    features, _ = model._features(batch, None)
    assert not torch.allclose(features.gates[0], features.gates[1]), "a fixture with one route for every task tests nothing"
    own_reads = features.base[0].unsqueeze(1) + torch.einsum("bkd,tk->btd", features.deltas[0], features.gates)  # [B, T, d]
    torch.testing.assert_close(model.representations(batch)[0], own_reads.mean(1).detach(), rtol=1e-5, atol=1e-5)


def test_fingerprint_npy_csv_and_composed_parts(tiny_parts, tmp_path):
    out = tmp_path / "emb.npy"
    result = run_cli("fingerprint", tiny_parts["A"], "--input", tiny_parts["smiles"], "-o", out)
    assert result.returncode == 0, result.stderr
    emb = np.load(out, allow_pickle=False)
    mask = np.load(tmp_path / "emb.valid.npy", allow_pickle=False)
    assert emb.shape == (6, 32) and emb.dtype == np.float32, "one row per input row, the backbone's width"
    assert mask.tolist() == [True, True, False, True, True, True]
    assert np.isnan(emb[2]).all() and np.isfinite(emb[mask]).all()
    assert "1 SMILES could not be parsed (rows 3)" in " ".join(result.stdout.split())
    table = run_cli_inprocess("fingerprint", tiny_parts["A"], "--input", tiny_parts["smiles"], "-o", tmp_path / "emb.csv")
    assert table.returncode == 0, table.stderr
    frame = pd.read_csv(tmp_path / "emb.csv")
    assert list(frame.columns[:3]) == ["smiles", "valid", "fp_0"] and frame.shape == (6, 2 + 32)
    assert frame["valid"].tolist() == [1, 1, 0, 1, 1, 1]
    np.testing.assert_allclose(frame.iloc[:, 2:].to_numpy(dtype=float)[mask], emb[mask], rtol=1e-5, atol=1e-6)
    # a composed bundle: one vector per part; with compose-steps 0 each part's is its own bundle's
    ab = tmp_path / "AB.safetensors"
    composed = run_cli_inprocess("compose", tiny_parts["A"], tiny_parts["B"], "--prior-from", tiny_parts["recipe"], "--compose-steps", "0", "-o", ab)
    assert composed.returncode == 0, composed.stderr
    both = run_cli_inprocess("fingerprint", ab, "--input", tiny_parts["smiles"], "-o", tmp_path / "ab.npy")
    assert both.returncode == 0, both.stderr
    parts = np.load(tmp_path / "ab.npy", allow_pickle=False)
    assert parts.shape == (6, 2, 32) and "2 parts" in " ".join(both.stdout.split())
    np.testing.assert_allclose(parts[mask, 0], emb[mask], rtol=1e-4, atol=1e-5)
    run_cli_inprocess("fingerprint", tiny_parts["B"], "--input", tiny_parts["smiles"], "-o", tmp_path / "b.npy")
    np.testing.assert_allclose(parts[mask, 1], np.load(tmp_path / "b.npy")[mask], rtol=1e-4, atol=1e-5)


def test_fingerprint_refusals(tiny_parts, tmp_path):
    assert_user_error(run_cli_inprocess("fingerprint", tiny_parts["A"], "--input", tiny_parts["smiles"], "-o", tmp_path / "emb.txt"),
                      "must end in .npy (an array) or .csv")
    assert_user_error(run_cli_inprocess("fingerprint", tiny_parts["A"], "--input", tmp_path / "none.csv", "-o", tmp_path / "e.npy"), "does not exist")
    assert not list(tmp_path.iterdir())
