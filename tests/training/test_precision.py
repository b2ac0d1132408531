"""`train.bf16_cpu`: bf16 autocast of the training steps on a CPU with native bf16 products;
`train.frozen_bf16`: only the frozen backbone's products in bf16 while training."""

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
        # frozen_bf16 off: its own test below; `auto` would turn it on for the fp32 runs on an AMX CPU
        recipe = load_recipe(recipe_path, [f"train.bf16_cpu={str(asked).lower()}", "train.frozen_bf16=false", "train.threads=1", "train.device=cpu"])
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
    done = run_cli(
        "train", tiny_recipe, "-o", run, "--set", "train.bf16_cpu=true", "--set", "train.frozen_bf16=false", "--set", "train.epochs=1", "--set", "train.device=cpu", env=env,
    )
    assert done.returncode == 0, done.stderr
    summary = json.loads((run / "summary.json").read_text())
    assert summary["precision"] == ("bf16 autocast" if cpu_computes_bf16() else "fp32")
    assert all(t.dtype == torch.float32 for t in load_file(str(run / "bundle.safetensors")).values() if t.is_floating_point())

    refused = run_cli("train", tiny_recipe, "-o", tmp_path / "bad", "--set", "train.bf16_cpu=sometimes", env=env)
    assert_user_error(refused, "train.bf16_cpu")
    assert not (tmp_path / "bad").exists()  # refused before anything is written


def test_frozen_bf16_rounds_the_frozen_products_of_training_only_and_auto_follows_amx(tmp_path, monkeypatch):
    """`train.frozen_bf16`: on (or on for the input gradients only), the same training to bf16's
    precision; `auto` is both where the CPU has AMX tiles, the input gradients only where it
    multiplies bf16 natively without them, fp32 elsewhere; `backward` is on where the CPU
    multiplies bf16 natively (fp32 elsewhere); the weights stay fp32."""
    monkeypatch.setenv("CFT_CACHE_DIR", str(tmp_path / "cache"))
    recipe_path = tmp_path / "r.yaml"
    recipe_path.write_text(TINY_RECIPE.replace("limit: 400", "limit: 160").replace("epochs: 3", "epochs: 2"))
    mlp_both = ["adapters.num_adapters=1", "adapters.placement=mlp-both", "adapters.activation=identity", "train.threads=1", "train.device=cpu"]
    summaries, bundles = {}, {}
    # (run, setting, the CPU has AMX tiles, the CPU multiplies bf16 natively)
    settings = (("off", "false", True, True), ("on", "true", False, False), ("auto-amx", "auto", True, True), ("auto-no-amx", "auto", False, True),
                ("auto-no-bf16", "auto", False, False), ("backward", "backward", False, True), ("backward-no-bf16", "backward", True, False))
    for name, setting, amx, native in settings:
        monkeypatch.setattr(inference, "cpu_has_amx", lambda amx=amx: amx)
        monkeypatch.setattr(inference, "cpu_computes_bf16", lambda native=native: native)
        recipe = load_recipe(recipe_path, [*mlp_both, f"train.frozen_bf16={setting}"])
        summaries[name] = train_recipe(recipe, tmp_path / name, Path("."))
        bundles[name] = load_file(str(tmp_path / name / "bundle.safetensors"))

    precision = {name: summary["precision"] for name, summary in summaries.items()}
    grads = "fp32, frozen products' input gradients bf16"
    assert precision == {"off": "fp32", "on": "fp32, frozen products bf16", "auto-amx": "fp32, frozen products bf16", "auto-no-amx": grads,
                         "auto-no-bf16": "fp32", "backward": grads, "backward-no-bf16": "fp32"}
    for same, as_ in (("auto-amx", "on"), ("auto-no-amx", "backward"), ("auto-no-bf16", "off"), ("backward-no-bf16", "off")):
        for key, tensor in bundles[as_].items():
            assert torch.equal(bundles[same][key], tensor), (same, key)
    off, on = _history(tmp_path / "off"), _history(tmp_path / "on")
    assert [a["loss"] for a in off] != [b["loss"] for b in on]
    for a, b in zip(off, on):
        assert b["loss"] == pytest.approx(a["loss"], rel=0.05)
    # only the gradients rounded: another training, as close to fp32's
    backward = _history(tmp_path / "backward")
    assert [a["loss"] for a in off] != [b["loss"] for b in backward]
    for a, b in zip(off, backward):
        assert b["loss"] == pytest.approx(a["loss"], rel=0.05)
    assert all(t.dtype == torch.float32 for t in bundles["on"].values() if t.is_floating_point())


def _backward_precision() -> str:
    """What `train.frozen_bf16=backward` runs on this CPU: bf16 input gradients where bf16 is native, else fp32."""
    return "fp32, frozen products' input gradients bf16" if inference.cpu_computes_bf16() else "fp32"


@pytest.mark.parametrize(("setting", "precision", "bad_value"), [
    ("true", lambda: "fp32, frozen products bf16", "sometimes"),
    ("backward", _backward_precision, "backwards"),
])
def test_frozen_bf16_through_the_cli_scores_in_fp32_and_refuses_a_bad_value(tiny_recipe, tmp_path, setting, precision, bad_value):
    """The real `cft train` with `train.frozen_bf16=true` (or `backward`): summary.json names what
    ran, and `cft eval` of the bundle (fp32) gives the summary's test score exactly, so the final
    scores were not computed in bf16; a bad value (a near-miss spelling too) is refused with exit
    code 2 before any run folder is made."""
    from conftest import assert_user_error, run_cli

    run, env = tmp_path / "run", {"CFT_CACHE_DIR": str(tmp_path / "cache")}
    sets = ["adapters.num_adapters=1", "adapters.placement=mlp-both", f"train.frozen_bf16={setting}", "train.epochs=2", "train.device=cpu"]
    done = run_cli("train", tiny_recipe, "-o", run, *[arg for s in sets for arg in ("--set", s)], env=env)
    assert done.returncode == 0, done.stderr
    summary = json.loads((run / "summary.json").read_text())
    assert summary["precision"] == precision()
    evaluated = run_cli("eval", run, "--split", "test", "--json", tmp_path / "eval.json", env=env)
    assert evaluated.returncode == 0, evaluated.stderr
    assert json.loads((tmp_path / "eval.json").read_text())["mean"] == summary["test"]["mean"]

    refused = run_cli("train", tiny_recipe, "-o", tmp_path / "bad", "--set", f"train.frozen_bf16={bad_value}", env=env)
    assert_user_error(refused, "train.frozen_bf16")
    assert not (tmp_path / "bad").exists()
