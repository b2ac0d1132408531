"""`train.ema`: an exponential moving average of the trainable weights, validated, chosen and saved."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import torch
from conftest import TINY_RECIPE, assert_user_error, run_cli
from reliability_kit import cli
from safetensors.torch import load_file

from cft.recipe.load import load_recipe
from cft.training import trainer
from cft.training.average import WeightAverage
from cft.training.trainer import train_recipe


def _history(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_the_average_follows_the_ema_formula_over_the_trainable_weights_only():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    model[0].requires_grad_(False)  # frozen: not averaged
    average = WeightAverage(model, decay=0.8)
    assert average.names == ["1.weight", "1.bias"]
    expected = [p.detach().clone() for p in model[1].parameters()]
    for _ in range(3):
        with torch.no_grad():
            for p in model[1].parameters():
                p.add_(torch.randn_like(p))
        average.update()
        expected = [0.8 * e + 0.2 * p.detach() for e, p in zip(expected, model[1].parameters())]
    raw = [p.detach().clone() for p in model[1].parameters()]
    with average.applied():
        for e, p in zip(expected, model[1].parameters()):
            assert torch.allclose(p, e, atol=1e-6)
    assert all(torch.equal(r, p) for r, p in zip(raw, model[1].parameters()))  # the raw weights are back
    restored = WeightAverage(model, decay=0.8)
    restored.load_state_dict(average.state_dict())
    assert restored.updates == 3 and all(torch.equal(a, b) for a, b in zip(restored.averaged, average.averaged))


def test_a_run_validates_and_saves_the_averaged_weights(tmp_path, monkeypatch):
    """Every epoch is judged (and the last chosen) on the averaged weights; the bundle holds them,
    not the optimiser's last weights."""
    monkeypatch.setenv("CFT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(trainer, "better", lambda metric, new, best: True)  # every epoch is the best: the last is saved
    recipe_path = tmp_path / "r.yaml"
    recipe_path.write_text(TINY_RECIPE.replace("limit: 400", "limit: 160").replace("epochs: 3", "epochs: 2"))
    recipe = load_recipe(recipe_path, ["train.ema=0.9", "train.threads=1", "train.device=cpu"])
    summary = train_recipe(recipe, tmp_path / "ema", Path("."))
    assert summary["weights"] == {"ema": 0.9, "updates": 2 * 4}  # 128 training molecules, batches of 32
    payload = torch.load(tmp_path / "ema" / "checkpoint.pt", weights_only=True)
    averaged = payload["average"]["averaged"]
    assert averaged and all(torch.equal(payload["best_state"][name], tensor) for name, tensor in averaged.items())
    # the same run without the average: the same training (the same losses), its last weights saved
    plain = train_recipe(load_recipe(recipe_path, ["train.threads=1", "train.device=cpu"]), tmp_path / "plain", Path("."))
    assert plain["weights"] == "last step"
    assert [e["loss"] for e in _history(tmp_path / "ema")] == [e["loss"] for e in _history(tmp_path / "plain")]
    ema_bundle, plain_bundle = (load_file(str(tmp_path / run / "bundle.safetensors")) for run in ("ema", "plain"))
    assert any(not torch.equal(ema_bundle[key], plain_bundle[key]) for key in plain_bundle)


def test_an_interrupted_ema_run_resumes_to_the_same_bundle(tmp_path, monkeypatch):
    """The average is part of the checkpoint: SIGTERM mid-epoch, then --resume, ends where an
    uninterrupted run ends, to the byte."""
    monkeypatch.setenv("CFT_CACHE_DIR", str(tmp_path / "cache"))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(TINY_RECIPE.replace("limit: 400", "limit: 240").replace("train:\n", "train:\n  ema: 0.9\n  threads: 1\n"))
    assert cli("train", recipe, "-o", tmp_path / "straight").returncode == 0
    real_step, calls = torch.optim.AdamW.step, {"n": 0}

    def step_then_sigterm(self, *args, **kwargs):
        out = real_step(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 9:  # mid-epoch 2 of 3 (6 batches per epoch)
            os.kill(os.getpid(), signal.SIGTERM)
        return out

    monkeypatch.setattr(torch.optim.AdamW, "step", step_then_sigterm)
    run = tmp_path / "run"
    assert cli("train", recipe, "-o", run).returncode == 143
    monkeypatch.setattr(torch.optim.AdamW, "step", real_step)
    assert cli("train", recipe, "-o", run, "--resume").returncode == 0
    assert (run / "bundle.safetensors").read_bytes() == (tmp_path / "straight" / "bundle.safetensors").read_bytes()
    summaries = [json.loads((r / "summary.json").read_text()) for r in (run, tmp_path / "straight")]
    assert summaries[0]["test"] == summaries[1]["test"] and summaries[0]["weights"] == summaries[1]["weights"]


def test_ema_through_the_cli_and_a_decay_out_of_range_refused(tiny_recipe, tmp_path):
    env = {"CFT_CACHE_DIR": str(tmp_path / "cache")}
    done = run_cli("train", tiny_recipe, "-o", tmp_path / "run", "--set", "train.ema=0.99", "--set", "train.epochs=1", env=env)
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["weights"]["ema"] == 0.99
    refused = run_cli("train", tiny_recipe, "-o", tmp_path / "bad", "--set", "train.ema=1.5", env=env)
    assert_user_error(refused, "train.ema")
    assert not (tmp_path / "bad").exists()  # refused before anything is written
