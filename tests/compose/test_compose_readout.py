"""Composition under the task read-out (the recipes' default): the parts' tasks read their own
part's experts through the composed routes, a read-out mismatch is refused, merges still work."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from conftest import TINY_PART_TASKS, assert_user_error, run_cli_inprocess

from cft.errors import CftError

A_TASKS, B_TASKS = TINY_PART_TASKS


def _header(path) -> dict:
    from cft.files.stfile import read_header

    return read_header(path, "bundle")


def _predict(bundle, smiles, out) -> pd.DataFrame:
    result = run_cli_inprocess("predict", bundle, "--input", smiles, "-o", out)
    assert result.returncode == 0, result.stderr
    return pd.read_csv(out)


def test_the_tiny_parts_use_the_task_readout(tiny_parts):
    for name in ("A", "B"):
        assert _header(tiny_parts[name])["spec"]["readout"] == "task"


@pytest.mark.parametrize("prior", ["block-diagonal", "data, no steps"])
def test_composed_bundle_predicts_every_task_like_its_own_bundle(tiny_parts, tmp_path, prior):
    """No cross-part mixing in the composed prior (block-diagonal with the default rule and steps,
    or a prior from data with --compose-steps 0): every task's prediction is its own bundle's."""
    ab = tmp_path / "AB.safetensors"
    extra = [] if prior == "block-diagonal" else ["--prior-from", tiny_parts["recipe"], "--compose-steps", "0"]
    result = run_cli_inprocess("compose", tiny_parts["A"], tiny_parts["B"], *extra, "-o", ab)
    assert result.returncode == 0, result.stderr
    header = _header(ab)
    assert header["spec"]["readout"] == "task"
    if prior == "block-diagonal":
        assert header["spec"]["compose_steps"] == 1, "the default composition settings, not a special case"
    got = _predict(ab, tiny_parts["smiles"], tmp_path / "ab.csv")
    for part, tasks in (("A", A_TASKS), ("B", B_TASKS)):
        alone = _predict(tiny_parts[part], tiny_parts["smiles"], tmp_path / f"{part}.csv")
        for t in tasks:
            assert np.allclose(got[t].to_numpy(), alone[t].to_numpy(), atol=1e-5, equal_nan=True), t


def test_a_cross_part_prior_changes_predictions_through_the_shared_experts(tiny_parts, tmp_path):
    """With the prior from data and full mixing, a task reads other parts' experts too."""
    ab = tmp_path / "ABmix.safetensors"
    result = run_cli_inprocess("compose", tiny_parts["A"], tiny_parts["B"], "--prior-from", tiny_parts["recipe"], "--compose-mix", "1",
                               "-o", ab)
    assert result.returncode == 0, result.stderr
    got = _predict(ab, tiny_parts["smiles"], tmp_path / "ab.csv")
    alone = _predict(tiny_parts["A"], tiny_parts["smiles"], tmp_path / "a.csv")
    assert any(not np.allclose(got[t].to_numpy(), alone[t].to_numpy(), atol=1e-5, equal_nan=True) for t in A_TASKS)


def test_merges_of_task_readout_bundles_work(tiny_parts, tmp_path):
    cat = tmp_path / "cat.safetensors"
    result = run_cli_inprocess("compose", tiny_parts["A"], tiny_parts["B"], "--mode", "cat", "-o", cat)
    assert result.returncode == 0, result.stderr
    spec = _header(cat)["spec"]
    assert spec["parts"][0]["num_adapters"] == 1 and spec["readout"] == "mixture", "one adapter per layer: nothing to gate"
    out = tmp_path / "cat.json"
    assert run_cli_inprocess("eval", cat, "--json", out).returncode == 0
    assert len(json.loads(out.read_text())["per_task"]) == len(A_TASKS) + len(B_TASKS)


def test_a_mixture_bundle_and_a_task_bundle_do_not_compose(tiny_parts, tmp_path):
    mixture = tmp_path / "M"
    trained = run_cli_inprocess("train", tiny_parts["recipe"], "-o", mixture, "--set", f"data.tasks={json.dumps(B_TASKS)}",
                                "--set", "routing.readout=mixture", "--set", "train.epochs=1")
    assert trained.returncode == 0, trained.stderr
    assert _header(mixture / "bundle.safetensors")["spec"]["readout"] == "mixture"
    out = tmp_path / "AM.safetensors"
    refused = run_cli_inprocess("compose", tiny_parts["A"], mixture, "-o", out)
    assert_user_error(refused, "routing.readout 'mixture'", "one read-out", "--mode cat")
    assert not out.exists()
    merged = run_cli_inprocess("compose", tiny_parts["A"], mixture, "--mode", "cat", "-o", tmp_path / "AMcat.safetensors")
    assert merged.returncode == 0, merged.stderr


def _fake(path: str, readout: str, parts: list[list[int]]):
    spec = SimpleNamespace(readout=readout, parts=[SimpleNamespace(name=f"p{i}", layers=layers) for i, layers in enumerate(parts)])
    return SimpleNamespace(path=Path(path), spec=spec)


def test_task_readout_parts_need_their_experts_at_one_layer():
    from cft.compose.sources import check_readouts

    check_readouts([_fake("a", "task", [[0, 2]]), _fake("b", "task", [[2]]), _fake("h", "mixture", [[]])])  # head-only: any read-out
    check_readouts([_fake("a", "mixture", [[0, 2]]), _fake("b", "mixture", [[1]])])  # the mixture has no experts
    with pytest.raises(CftError, match="last insertion layer") as err:
        check_readouts([_fake("a", "task", [[0, 2]]), _fake("b", "task", [[0, 1]])])
    assert "a (p0): layer 2" in str(err.value) and "b (p0): layer 1" in str(err.value)


def test_inspect_routing_shows_the_per_task_expert_gates(tiny_parts, tmp_path):
    ab = tmp_path / "AB.safetensors"
    assert run_cli_inprocess("compose", tiny_parts["A"], tiny_parts["B"], "--prior-from", tiny_parts["recipe"], "-o", ab).returncode == 0
    for target in (tiny_parts["A"], ab):
        shown = run_cli_inprocess("inspect-routing", target, "--png", tmp_path / "r.png", "--json", tmp_path / "r.json")
        assert shown.returncode == 0, shown.stderr
        text = " ".join(shown.stdout.split())
        assert "read-out: task (experts: layer 1)" in text and "layer 1 (expert gates, one row per task)" in text
        assert "layer 0 (shared mixture)" in text
        routes = json.loads((tmp_path / "r.json").read_text())
        assert routes["readout"] == "task" and routes["expert_layer"] == 1
        assert routes["layers"]["1"]["role"] == "expert gates" and routes["layers"]["0"]["role"] == "mixture"
        gates = np.array(routes["layers"]["1"]["routes"])
        assert gates.shape[0] == len(routes["tasks"]) and np.allclose(gates.sum(axis=1), 1.0, atol=1e-5)
        assert (tmp_path / "r.png").stat().st_size > 10_000
