"""`train.select_on`: the best epoch, early stopping and the plateau scheduler judged on the
validation loss instead of the metric."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cft.recipe.load import load_recipe
from cft.training.optim import make_scheduler
from cft.training.trainer import train_recipe
from tests.conftest import TINY_RECIPE


def _history(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_select_on_loss_keeps_the_epoch_of_the_lowest_validation_loss(tmp_path, monkeypatch):
    monkeypatch.setenv("CFT_CACHE_DIR", str(tmp_path / "cache"))
    recipe_path = tmp_path / "r.yaml"
    # a high learning rate, so that the validation loss does not simply fall every epoch
    recipe_path.write_text(TINY_RECIPE.replace("limit: 400", "limit: 160").replace("epochs: 3", "epochs: 5").replace("lr: 0.005", "lr: 0.05"))
    summaries = {}
    for select_on in ("metric", "loss"):
        recipe = load_recipe(recipe_path, [f"train.select_on={select_on}", "train.threads=1", "train.device=cpu"])
        summaries[select_on] = train_recipe(recipe, tmp_path / select_on, Path("."))
    by_metric, by_loss = _history(tmp_path / "metric"), _history(tmp_path / "loss")
    assert all("valid_loss" not in epoch for epoch in by_metric)  # only computed when it judges
    losses = [epoch["valid_loss"] for epoch in by_loss]
    assert summaries["loss"]["best_epoch"] == 1 + losses.index(min(losses))
    aucs = [epoch["valid_rocauc"] for epoch in by_metric]
    assert summaries["metric"]["best_epoch"] == 1 + aucs.index(max(aucs))
    # the same training either way (only the choice differs): the runs see the same losses
    assert [e["loss"] for e in by_metric] == pytest.approx([e["loss"] for e in by_loss])


def test_the_plateau_scheduler_minimises_the_loss(tmp_path):
    import torch

    recipe_path = tmp_path / "r.yaml"
    recipe_path.write_text(TINY_RECIPE)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    for select_on, mode in (("metric", "max"), ("loss", "min")):
        recipe = load_recipe(recipe_path, ["train.scheduler=plateau", f"train.select_on={select_on}"])
        assert make_scheduler(optimizer, recipe, 10).mode == mode


def test_select_on_loss_through_the_cli_and_a_bad_value_refused(tiny_recipe, tmp_path):
    """The real `cft train --set train.select_on=loss`: the summary's best epoch is the one of the
    lowest valid_loss in metrics.jsonl; any other value exits 2 before anything is written."""
    from conftest import assert_user_error, run_cli

    run = tmp_path / "run"
    done = run_cli("train", tiny_recipe, "-o", run, "--set", "train.select_on=loss", "--set", "train.lr=0.05",
                   env={"CFT_CACHE_DIR": str(tmp_path / "cache")})
    assert done.returncode == 0, done.stderr
    losses = [epoch["valid_loss"] for epoch in _history(run)]
    assert json.loads((run / "summary.json").read_text())["best_epoch"] == 1 + losses.index(min(losses))

    refused = run_cli("train", tiny_recipe, "-o", tmp_path / "bad", "--set", "train.select_on=accuracy")
    assert_user_error(refused, "train.select_on")
    assert not (tmp_path / "bad").exists()
