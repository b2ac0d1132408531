"""Composition of bundles whose adapters sit beside the GIN MLP (`adapters.placement: mlp`, `mlp-hidden`, `mlp-out`, `mlp-both`):
route mode keeps every task's predictions, the merges keep the placement, mixed placements are
refused with a clear error and nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import TINY_PART_TASKS, assert_user_error, run_cli_inprocess
from ogb.utils.features import get_atom_feature_dims

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


def _train_a_with_b_without(tiny_parts, folder, a_sets: list[str], both_sets: list[str]) -> dict:
    """Parts A (with `a_sets`) and B (without), both with `both_sets`, trained through the CLI."""
    out = {}
    for name, tasks, extra in (("A", A_TASKS, a_sets), ("B", B_TASKS, [])):
        trained = run_cli_inprocess("train", tiny_parts["recipe"], "-o", folder / name, "--set", f"data.tasks={json.dumps(tasks)}",
                                    "--set", "train.epochs=1", *both_sets, *extra)
        assert trained.returncode == 0, trained.stderr
        out[name] = folder / name / "bundle.safetensors"
    return out


def _composed_predicts_like_its_parts(parts: dict, tiny_parts, tmp_path) -> Path:
    """Compose parts A and B (route mode) and check every task predicts as in its own bundle."""
    ab = tmp_path / "AB.safetensors"
    result = run_cli_inprocess("compose", parts["A"], parts["B"], "-o", ab)
    assert result.returncode == 0, result.stderr
    got = _predict(ab, tiny_parts["smiles"], tmp_path / "ab.csv")
    for part, tasks in (("A", A_TASKS), ("B", B_TASKS)):
        alone = _predict(parts[part], tiny_parts["smiles"], tmp_path / f"{part}.csv")
        for t in tasks:
            assert np.allclose(got[t].to_numpy(), alone[t].to_numpy(), atol=1e-5, equal_nan=True), t
    return ab


@pytest.fixture(scope="module")
def vn_and_plain(tiny_parts, tmp_path_factory):
    """Part A with banks on the virtual node's MLP too (`adapters.virtual_node`), part B without:
    both `mlp-both`, trained through the CLI."""
    return _train_a_with_b_without(tiny_parts, tmp_path_factory.mktemp("vn-parts"), ["--set", "adapters.virtual_node=true"],
                                   ["--set", "adapters.placement=mlp-both"])


def test_virtual_node_banks_are_saved_and_compose_beside_a_bundle_without_them(vn_and_plain, tiny_parts, tmp_path):
    from safetensors import safe_open

    with safe_open(vn_and_plain["A"], "pt") as f:
        names = set(f.keys())
    # the tiny backbone has 2 layers: the virtual node is updated after layer 0 only
    assert {"vn_adapters.0.U", "vn_adapters.0.V", "vn_out_adapters.0.U", "vn_out_adapters.0.V"} <= names
    assert not any(n.startswith(("vn_adapters.1.", "vn_out_adapters.1.")) for n in names)
    with safe_open(vn_and_plain["A"], "pt") as f:
        assert f.get_tensor("vn_out_adapters.0.V").abs().sum() > 0, "the virtual node's banks trained"
    assert read_header(vn_and_plain["A"], "bundle")["spec"]["virtual_node_adapters"] is True
    ab = _composed_predicts_like_its_parts(vn_and_plain, tiny_parts, tmp_path)
    assert read_header(ab, "bundle")["spec"]["virtual_node_adapters"] is True


@pytest.mark.parametrize("mode", ["cat", "svd"])
def test_a_merge_keeps_the_virtual_node_banks(vn_and_plain, tiny_parts, tmp_path, mode):
    merged = tmp_path / f"{mode}.safetensors"
    result = run_cli_inprocess("compose", vn_and_plain["A"], vn_and_plain["B"], "--mode", mode, "-o", merged)
    if mode == "svd":  # the recipe's gelu adapters are not linear updates: svd refuses, and says why
        assert_user_error(result, "--mode svd", "identity")
        return
    assert result.returncode == 0, result.stderr
    from safetensors import safe_open

    with safe_open(merged, "pt") as f:
        assert f.get_tensor("vn_out_adapters.0.V").abs().sum() > 0, "A's virtual-node update survives the merge"
    assert run_cli_inprocess("eval", merged, "--json", tmp_path / "m.json").returncode == 0


@pytest.fixture(scope="module")
def own_ranks(tiny_parts, tmp_path_factory):
    """Parts A and B, both with linear adapters at rank 4, banks on the virtual node's MLP and on the
    atom embeddings: A's at ranks of their own (`adapters.virtual_node_rank` 6, wider than the parts'
    rank; `adapters.embeddings_rank` 5), B's at the parts'."""
    both = ["--set", "adapters.placement=mlp-both", "--set", "adapters.virtual_node=true", "--set", "adapters.embeddings=true",
            "--set", "adapters.rank=4", "--set", "adapters.activation=identity"]
    folder = tmp_path_factory.mktemp("own-rank-parts")
    out = {}
    for name, tasks, extra in (("A", A_TASKS, ["--set", "adapters.virtual_node_rank=6", "--set", "adapters.embeddings_rank=5"]), ("B", B_TASKS, [])):
        trained = run_cli_inprocess("train", tiny_parts["recipe"], "-o", folder / name, "--set", f"data.tasks={json.dumps(tasks)}",
                                    "--set", "train.epochs=1", *both, *extra)
        assert trained.returncode == 0, trained.stderr
        out[name] = folder / name / "bundle.safetensors"
    return out


def _widths(bundle) -> dict[str, int]:
    """The rank (columns) of each bank at layer 0 of a bundle: U is [K, r, d_in]."""
    from safetensors import safe_open

    with safe_open(bundle, "pt") as f:
        return {name: f.get_slice(f"{name}.0.U").get_shape()[1] for name in ("adapters", "out_adapters", "vn_adapters", "vn_out_adapters", "embedding_adapters")}


def _own_ranks(bundle) -> tuple:
    spec = read_header(bundle, "bundle")["spec"]
    return spec["virtual_node_rank"], spec["embeddings_rank"]


def test_banks_take_their_own_rank_and_keep_it_when_composed(own_ranks, tiny_parts, tmp_path):
    a_widths = {"adapters": 4, "out_adapters": 4, "vn_adapters": 6, "vn_out_adapters": 6, "embedding_adapters": 5}
    assert _widths(own_ranks["A"]) == a_widths and _own_ranks(own_ranks["A"]) == (6, 5)
    assert set(_widths(own_ranks["B"]).values()) == {4} and _own_ranks(own_ranks["B"]) == (None, None)
    ab = _composed_predicts_like_its_parts(own_ranks, tiny_parts, tmp_path)  # A's columns all carried over
    assert _widths(ab) == a_widths and _own_ranks(ab) == (6, 5)
    # the narrower source first: the banks still take the widest
    ba = tmp_path / "BA.safetensors"
    assert run_cli_inprocess("compose", own_ranks["B"], own_ranks["A"], "-o", ba).returncode == 0
    assert _widths(ba) == a_widths and _own_ranks(ba) == (6, 5)


@pytest.mark.parametrize("mode", ["cat", "svd"])
def test_a_merge_of_banks_of_two_ranks(own_ranks, tmp_path, mode):
    merged = tmp_path / f"{mode}.safetensors"
    result = run_cli_inprocess("compose", own_ranks["A"], own_ranks["B"], "--mode", mode, "-o", merged)
    assert result.returncode == 0, result.stderr
    # cat stacks the K components of each (rank 4 + 4 in the GIN MLPs' banks, 6 + 4 on the virtual
    # node, 5 + 4 on the embeddings); svd keeps the widest component's rank
    k = read_header(own_ranks["A"], "bundle")["spec"]["parts"][0]["num_adapters"]
    expected = {"cat": (k * (4 + 4), k * (6 + 4), k * (5 + 4)), "svd": (4, 6, 5)}[mode]
    widths = _widths(merged)
    assert (widths["adapters"], widths["vn_adapters"], widths["embedding_adapters"]) == expected
    assert _own_ranks(merged) == expected[1:]
    assert run_cli_inprocess("eval", merged, "--json", tmp_path / "m.json").returncode == 0


def test_a_linear_merge_of_banks_of_two_ranks_is_refused(own_ranks, tmp_path):
    merged = tmp_path / "linear.safetensors"
    refused = run_cli_inprocess("compose", own_ranks["A"], own_ranks["B"], "--mode", "linear", "-o", merged)
    assert_user_error(refused, "--mode linear", "virtual-node banks have ranks [4, 6]")
    assert not merged.exists()


@pytest.fixture(scope="module")
def emb_and_plain(tiny_parts, tmp_path_factory):
    """Part A with a bank on the atom embeddings too (`adapters.embeddings`), part B without; both
    with linear adapters (svd merges them), trained through the CLI."""
    return _train_a_with_b_without(tiny_parts, tmp_path_factory.mktemp("emb-parts"), ["--set", "adapters.embeddings=true"],
                                   ["--set", "adapters.activation=identity"])


def test_embedding_banks_are_saved_and_compose_beside_a_bundle_without_them(emb_and_plain, tiny_parts, tmp_path):
    from safetensors import safe_open

    with safe_open(emb_and_plain["A"], "pt") as f:
        names = set(f.keys())
        assert f.get_tensor("embedding_adapters.0.V").abs().sum() > 0, "the embeddings' bank trained"
        # U reads the multi-hot atom vector: one column per value of each of OGB's atom features
        assert f.get_tensor("embedding_adapters.0.U").shape[-1] == sum(get_atom_feature_dims())
    assert not any(n.startswith("embedding_adapters.1.") for n in names)
    assert read_header(emb_and_plain["A"], "bundle")["spec"]["embedding_adapters"] is True
    ab = _composed_predicts_like_its_parts(emb_and_plain, tiny_parts, tmp_path)
    assert read_header(ab, "bundle")["spec"]["embedding_adapters"] is True


@pytest.mark.parametrize("mode", ["cat", "svd"])
def test_a_merge_keeps_the_embedding_bank(emb_and_plain, tmp_path, mode):
    merged = tmp_path / f"{mode}.safetensors"
    result = run_cli_inprocess("compose", emb_and_plain["A"], emb_and_plain["B"], "--mode", mode, "-o", merged)
    assert result.returncode == 0, result.stderr
    from safetensors import safe_open

    with safe_open(merged, "pt") as f:
        assert f.get_tensor("embedding_adapters.0.V").abs().sum() > 0, "A's embedding update survives the merge"
    assert run_cli_inprocess("eval", merged, "--json", tmp_path / "m.json").returncode == 0
