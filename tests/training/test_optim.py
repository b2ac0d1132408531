"""The optimiser's parameter groups: heads at `head_lr`, the adapters' up-projections at
`up_lr_ratio * lr` (LoRA+), the rest at `lr`; and runs of the CLI that use and refuse them."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from conftest import TINY_RECIPE, assert_user_error, run_cli
from model_kit import tiny_model
from safetensors.torch import load_file

from cft.errors import CftError
from cft.nn.adapters import AdapterBank
from cft.recipe.load import load_recipe
from cft.training.optim import fused_adamw, make_optimizer


def _recipe(tmp_path: Path, *overrides: str):
    path = tmp_path / "r.yaml"
    path.write_text(TINY_RECIPE)
    return load_recipe(path, ["train.lr=0.002", *overrides])


def _groups(optimizer) -> list[tuple[float, set[int]]]:
    return [(g["lr"], {id(p) for p in g["params"]}) for g in optimizer.param_groups]


def test_up_projections_take_their_own_rate(tmp_path):
    model = tiny_model()
    ups = {id(b.V) for b in model.modules() if isinstance(b, AdapterBank)}
    downs = {id(b.U) for b in model.modules() if isinstance(b, AdapterBank)}
    heads = {id(p) for p in model.head.parameters()}
    assert ups and downs
    groups = _groups(make_optimizer(model, _recipe(tmp_path, "train.up_lr_ratio=16", "train.head_lr=0.01")))
    assert groups[1] == (pytest.approx(0.032), ups)
    assert groups[2] == (0.01, heads)
    rest_lr, rest = groups[0]
    assert rest_lr == 0.002 and downs <= rest and not (rest & (ups | heads))
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert set().union(*(ids for _, ids in groups)) == trainable  # every trainable weight once


def test_adamw_runs_fused_on_a_cpu_and_its_step_matches_the_loop(tmp_path):
    """On a CPU the optimiser takes torch's fused kernel; one step of it moves the weights as the
    per-tensor loop does, to float rounding."""
    import torch

    model, reference = tiny_model(), tiny_model()
    reference.load_state_dict(model.state_dict())
    optimizer = make_optimizer(model, _recipe(tmp_path))
    assert all(g["fused"] for g in optimizer.param_groups)
    loop = torch.optim.AdamW([p for p in reference.parameters() if p.requires_grad], lr=0.002, weight_decay=optimizer.defaults["weight_decay"],
                             foreach=False)
    for m in (model, reference):
        for p in m.parameters():
            if p.requires_grad:
                p.grad = torch.full_like(p, 0.5)
    optimizer.step()
    loop.step()
    for a, b in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(a, b)
    assert not fused_adamw([{"params": [torch.nn.Parameter(torch.zeros(1), requires_grad=True)]}, {"params": [torch.nn.Parameter(torch.zeros(1, device="meta"))]}])


def test_ratio_one_keeps_the_up_projections_with_the_rest(tmp_path):
    model = tiny_model()
    groups = _groups(make_optimizer(model, _recipe(tmp_path)))
    assert [lr for lr, _ in groups] == [0.002, 0.002]  # the rest (U and V together), the heads
    assert {id(b.V) for b in model.modules() if isinstance(b, AdapterBank)} <= groups[0][1]


def test_the_ratio_is_a_positive_number(tmp_path):
    with pytest.raises(CftError, match="up_lr_ratio"):
        _recipe(tmp_path, "train.up_lr_ratio=0")


def test_a_run_with_loraplus_moves_the_up_projections_further(tmp_path):
    """Through the CLI, the same data, seed and steps: with lambda = 16 the up-projections end
    further from their zero start than with one rate, and the run's recipe.yaml records it."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text(TINY_RECIPE.replace("limit: 400", "limit: 160").replace("epochs: 3", "epochs: 1"))
    norms = {}
    for ratio in (1, 16):
        run = tmp_path / f"r{ratio}"
        done = run_cli("train", recipe, "-o", run, "--set", "train.lr=0.002", "--set", f"train.up_lr_ratio={ratio}", env={"CFT_CACHE_DIR": str(tmp_path / "cache")})
        assert done.returncode == 0, done.stderr
        bundle = load_file(str(run / "bundle.safetensors"))
        norms[ratio] = sum(float(t.norm()) for k, t in bundle.items() if k.endswith(".V"))
        assert yaml.safe_load((run / "recipe.yaml").read_text())["train"]["up_lr_ratio"] == ratio
    assert norms[16] > 2 * norms[1] > 0


def test_the_cli_refuses_a_ratio_that_is_not_positive(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(TINY_RECIPE)
    result = run_cli("train", recipe, "-o", tmp_path / "run", "--set", "train.up_lr_ratio=0")
    assert_user_error(result, "train.up_lr_ratio", "must be > 0")
    assert not (tmp_path / "run").exists()
