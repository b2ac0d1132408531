"""`train.bf16_cpu`: bf16 autocast of the training steps on a CPU with native bf16 products."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from cft.recipe.load import load_recipe
from cft.training import inference, trainer
from cft.training.trainer import train_recipe
from tests.conftest import TINY_RECIPE


def _history(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_bf16_cpu_autocasts_the_training_steps_only_and_only_where_the_cpu_computes_bf16(tmp_path, monkeypatch):
    monkeypatch.setenv("CFT_CACHE_DIR", str(tmp_path / "cache"))
    recipe_path = tmp_path / "r.yaml"
    recipe_path.write_text(TINY_RECIPE.replace("limit: 400", "limit: 160").replace("epochs: 3", "epochs: 2"))
    evaluation_autocast = []
    plain_autocast = inference.autocast

    def spying_autocast(device, enabled):  # the evaluation passes (valid each epoch, valid and test at the end)
        evaluation_autocast.append(enabled)
        return plain_autocast(device, enabled)

    monkeypatch.setattr(inference, "autocast", spying_autocast)
    summaries, bundles = {}, {}
    for name, asked, native in (("fp32", False, True), ("bf16", True, True), ("no-native", True, False)):
        monkeypatch.setattr(trainer, "cpu_computes_bf16", lambda native=native: native)
        recipe = load_recipe(recipe_path, [f"train.bf16_cpu={str(asked).lower()}", "train.threads=1", "train.device=cpu"])
        summaries[name] = train_recipe(recipe, tmp_path / name, Path("."))
        bundles[name] = load_file(str(tmp_path / name / "bundle.safetensors"))

    assert [summaries[n]["precision"] for n in ("fp32", "bf16", "no-native")] == ["fp32", "bf16 autocast", "fp32"]
    assert evaluation_autocast and not any(evaluation_autocast)  # validation and test stay fp32 on CPU
    # without native bf16 the request is ignored: the very same run as fp32
    assert summaries["no-native"]["test"]["mean"] == summaries["fp32"]["test"]["mean"]
    for key, tensor in bundles["fp32"].items():
        assert torch.equal(bundles["no-native"][key], tensor), key
    # bf16 products: the same training to bf16's precision, not the same numbers
    fp32, bf16 = _history(tmp_path / "fp32"), _history(tmp_path / "bf16")
    assert [a["loss"] for a in fp32] != [b["loss"] for b in bf16]
    for a, b in zip(fp32, bf16):
        assert b["loss"] == pytest.approx(a["loss"], rel=0.05)
    assert all(t.dtype == torch.float32 for t in bundles["bf16"].values() if t.is_floating_point())  # weights stay fp32


def test_bf16_cpu_through_the_cli_records_the_precision_and_refuses_a_non_boolean(tiny_recipe, tmp_path):
    """The real `cft train`: bf16 steps exactly where this CPU computes bf16 natively; a bad value is refused."""
    from conftest import assert_user_error, run_cli

    from cft.training.inference import cpu_computes_bf16

    run = tmp_path / "run"
    env = {"CFT_CACHE_DIR": str(tmp_path / "cache")}
    done = run_cli("train", tiny_recipe, "-o", run, "--set", "train.bf16_cpu=true", "--set", "train.epochs=1", "--set", "train.device=cpu", env=env)
    assert done.returncode == 0, done.stderr
    summary = json.loads((run / "summary.json").read_text())
    assert summary["precision"] == ("bf16 autocast" if cpu_computes_bf16() else "fp32")
    assert all(t.dtype == torch.float32 for t in load_file(str(run / "bundle.safetensors")).values() if t.is_floating_point())

    refused = run_cli("train", tiny_recipe, "-o", tmp_path / "bad", "--set", "train.bf16_cpu=sometimes", env=env)
    assert_user_error(refused, "train.bf16_cpu")
    assert not (tmp_path / "bad").exists()  # refused before anything is written
