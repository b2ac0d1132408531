"""Composition of bundles whose adapters sit beside the GIN MLP (`adapters.placement: mlp`, `mlp-hidden`, `mlp-out`, `mlp-both`):
route mode keeps every task's predictions, the merges keep the placement, mixed placements are
refused with a clear error and nothing written."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from conftest import TINY_PART_TASKS, assert_user_error, run_cli_inprocess

from cft.files.stfile import read_header

A_TASKS, B_TASKS = TINY_PART_TASKS


@pytest.fixture(scope="module", params=["mlp", "mlp-hidden", "mlp-out", "mlp-both"])
def mlp_parts(request, tiny_parts, tmp_path_factory):
    """Parts A and B of `tiny_parts`, retrained with their adapters in the GIN MLP (B at rank 2:
    composition pads ranks, also of the wider `mlp-hidden` banks)."""
    placement = request.param
    folder = tmp_path_factory.mktemp(f"{placement}-parts")
    out = {"placement": placement}
    for name, tasks, rank in (("A", A_TASKS, 4), ("B", B_TASKS, 2)):
        trained = run_cli_inprocess("train", tiny_parts["recipe"], "-o", folder / name, "--set", f"data.tasks={json.dumps(tasks)}",
                                    "--set", f"adapters.placement={placement}", "--set", f"adapters.rank={rank}", "--set", "train.epochs=1")
        assert trained.returncode == 0, trained.stderr
        out[name] = folder / name / "bundle.safetensors"
        assert read_header(out[name], "bundle")["spec"]["placement"] == placement
    return out


def _predict(bundle, smiles, out) -> pd.DataFrame:
    result = run_cli_inprocess("predict", bundle, "--input", smiles, "-o", out)
    assert result.returncode == 0, result.stderr
    return pd.read_csv(out)


def test_composed_mlp_bundles_predict_every_task_like_their_own(mlp_parts, tiny_parts, tmp_path):
    ab = tmp_path / "AB.safetensors"
    result = run_cli_inprocess("compose", mlp_parts["A"], mlp_parts["B"], "-o", ab)
    assert result.returncode == 0, result.stderr
    assert read_header(ab, "bundle")["spec"]["placement"] == mlp_parts["placement"]
    got = _predict(ab, tiny_parts["smiles"], tmp_path / "ab.csv")
    for part, tasks in (("A", A_TASKS), ("B", B_TASKS)):
        alone = _predict(mlp_parts[part], tiny_parts["smiles"], tmp_path / f"{part}.csv")
        for t in tasks:
            assert np.allclose(got[t].to_numpy(), alone[t].to_numpy(), atol=1e-5, equal_nan=True), t


def test_a_merge_of_mlp_bundles_keeps_the_placement(mlp_parts, tmp_path):
    cat = tmp_path / "cat.safetensors"
    result = run_cli_inprocess("compose", mlp_parts["A"], mlp_parts["B"], "--mode", "cat", "-o", cat)
    assert result.returncode == 0, result.stderr
    assert read_header(cat, "bundle")["spec"]["placement"] == mlp_parts["placement"]
    out = tmp_path / "cat.json"
    assert run_cli_inprocess("eval", cat, "--json", out).returncode == 0, "the merged bank predicts"


@pytest.mark.parametrize("mode", ["route", "cat"])
def test_mixed_placements_do_not_compose(mlp_parts, tiny_parts, tmp_path, mode):
    out = tmp_path / "mixed.safetensors"
    refused = run_cli_inprocess("compose", tiny_parts["A"], mlp_parts["B"], "--mode", mode, "-o", out)
    assert_user_error(refused, "'output'", f"'{mlp_parts['placement']}'", "adapters.placement")
    assert not out.exists()
