"""The contrastive pretraining objectives (GraphCL, alone and beside attribute masking): the loss,
the node-dropped views, the cache key, and a pretraining stage run through the CLI."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import assert_user_error, run_cli
from safetensors.numpy import load_file

from cft.recipe.schema import PretrainConfig
from cft.spec import BackboneSpec
from cft.training.pretrain import dropped_view, nt_xent, pretrain_key
from tests.model_kit import tiny_batch


def _nt_xent_by_hand(u: torch.Tensor, v: torch.Tensor, tau: float) -> float:
    """The definition, one row at a time: -log(exp(s(k, k')/tau) / sum_{j != k} exp(s(k, j)/tau))."""
    z = torch.nn.functional.normalize(torch.cat([u, v]), dim=1).double()
    n, losses = u.size(0), []
    for k in range(2 * n):
        partner = (k + n) % (2 * n)
        others = [float(z[k] @ z[j]) / tau for j in range(2 * n) if j != k]
        losses.append(-(float(z[k] @ z[partner]) / tau - math.log(sum(math.exp(o) for o in others))))
    return sum(losses) / len(losses)


def test_nt_xent_is_the_definition_and_rewards_agreeing_views():
    torch.manual_seed(0)
    u, v = torch.randn(5, 8), torch.randn(5, 8)
    assert nt_xent(u, v, 0.1).item() == pytest.approx(_nt_xent_by_hand(u, v, 0.1), rel=1e-5)
    assert nt_xent(u, v, 0.5).item() == pytest.approx(_nt_xent_by_hand(u, v, 0.5), rel=1e-5)
    # two views that agree (each graph's views close, the graphs apart) cost less than two that do not
    agreeing = nt_xent(u, u + 0.01 * torch.randn(5, 8), 0.1)
    assert agreeing < nt_xent(u, v, 0.1) and agreeing < 0.1
    # and the loss reaches both views
    u.requires_grad_(True)
    v.requires_grad_(True)
    nt_xent(u, v, 0.1).backward()
    assert u.grad.abs().sum() > 0 and v.grad.abs().sum() > 0


def test_a_dropped_view_removes_atoms_with_their_bonds_and_keeps_every_molecule():
    batch = tiny_batch()
    torch.manual_seed(3)
    view = dropped_view(batch, 0.3)
    assert view.num_graphs == batch.num_graphs
    assert 0 < view.x.size(0) < batch.num_nodes and view.batch.size(0) == view.x.size(0)
    assert view.edge_index.size(1) == view.edge_attr.size(0) < batch.edge_index.size(1)
    # renumbered into the kept atoms, and every bond still joins two atoms of one molecule
    assert int(view.edge_index.max()) < view.x.size(0)
    assert torch.equal(view.batch[view.edge_index[0]], view.batch[view.edge_index[1]])
    # the kept atoms are the batch's own rows, in order, molecule by molecule
    for g in range(batch.num_graphs):
        mine, theirs = view.x[view.batch == g], batch.x[batch.batch == g]
        assert all(any(torch.equal(row, other) for other in theirs) for row in mine)
    # nothing dropped at a rate near zero: the batch itself
    nearly_all = dropped_view(batch, 1e-9)
    for key in ("x", "edge_index", "edge_attr", "batch"):
        assert torch.equal(getattr(nearly_all, key), getattr(batch, key)), key


def test_the_cache_key_reads_the_contrastive_settings_only_where_they_matter():
    spec, identity = BackboneSpec(), {"name": "x", "sha256": "0"}

    def key(**fields) -> str:
        return pretrain_key(PretrainConfig(**fields), spec, 0, identity)

    # a backbone cached by masking is found whatever the (unread) contrastive settings say
    assert key(method="masking") == key(method="masking", drop_rate=0.4, temperature=0.5)
    for method in ("contrastive", "masking+contrastive"):
        assert key(method=method) != key(method=method, drop_rate=0.4) != key(method=method, drop_rate=0.4, temperature=0.5)
    assert len({key(method=m) for m in ("masking", "contrastive", "masking+contrastive")}) == 3


def test_contrastive_pretraining_runs_through_the_cli_and_makes_another_backbone(tmp_path):
    """`backbone.pretrain.method: masking+contrastive` (and `contrastive`) pretrain on the embedded
    molecules, the run trains on the result, and the backbones differ from masking's."""
    small = ["--set", "train.epochs=1", "--set", "train.threads=1", "--set", "backbone.pretrain.epochs=1", "--set", "backbone.pretrain.cache=false",
             "--set", "data.limit=400", "--set", "backbone.pretrain.data.limit=400", "--set", "backbone.num_layers=2", "--set", "backbone.hidden=32"]
    backbones = {}
    for method in ("masking", "contrastive", "masking+contrastive"):
        out = tmp_path / method.replace("+", "-")
        result = run_cli("train", "recipes/quickstart.yaml", "-o", out, *small, "--set", f"backbone.pretrain.method={method}",
                         env={"OMP_NUM_THREADS": "1"})
        assert result.returncode == 0, result.stderr
        assert f"pretrain ({method}) epoch 1/1: loss" in result.stderr + result.stdout
        backbones[method] = load_file(str(out / "backbone.safetensors"))
    # settings out of range, or a method cft lacks: refused before anything is written
    for bad, named in ((["--set", "backbone.pretrain.method=contrastive", "--set", "backbone.pretrain.drop_rate=1"], "backbone.pretrain.drop_rate"),
                       (["--set", "backbone.pretrain.temperature=0"], "backbone.pretrain.temperature"),
                       (["--set", "backbone.pretrain.method=graphcl"], "backbone.pretrain.method")):
        refused = run_cli("train", "recipes/quickstart.yaml", "-o", tmp_path / "refused", *small, *bad)
        assert_user_error(refused, named)
        assert not (tmp_path / "refused").exists()
    first = backbones["masking"]
    for method in ("contrastive", "masking+contrastive"):
        assert backbones[method].keys() == first.keys()
        assert any(backbones[method][k].tobytes() != first[k].tobytes() for k in first), f"{method} made masking's backbone"
