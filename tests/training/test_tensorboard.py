"""TensorBoard event files: written by `cft train`, read back with TensorBoard's own reader."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import run_cli
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from cft.errors import CftError
from cft.training import tensorboard as tb


def _events(folder) -> EventAccumulator:
    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc


def test_train_writes_losses_metrics_routing_and_images(tiny_recipe, tmp_path):
    out = tmp_path / "run"
    result = run_cli("train", tiny_recipe, "-o", out, "--set", "train.epochs=2")
    assert result.returncode == 0, result.stderr
    acc = _events(out / "tensorboard")
    tags = acc.Tags()
    for tag in ("loss/total", "loss/task", "loss/reg", "valid/rocauc", "lr", "valid_task/halogen_any"):
        assert [e.step for e in acc.Scalars(tag)] == [1, 2], tag
    entropy = [t for t in tags["scalars"] if t.startswith("routing/entropy/layer")]
    images = [t for t in tags["images"] if t.startswith("routing/layer")]
    assert entropy and images, tags
    metrics = [line for line in (out / "metrics.jsonl").read_text().splitlines() if line]
    import json

    first = json.loads(metrics[0])
    assert acc.Scalars("loss/total")[0].value == pytest.approx(first["loss"], rel=1e-6)
    assert acc.Scalars("valid/rocauc")[1].value == pytest.approx(json.loads(metrics[1])["valid_rocauc"], rel=1e-6)
    image = acc.Images(images[0])[0]
    assert (image.height, image.width) == (8, 3)  # tasks x adapters of the tiny recipe


def test_tensorboard_false_writes_nothing(tiny_recipe, tmp_path):
    out = tmp_path / "run"
    result = run_cli("train", tiny_recipe, "-o", out, "--set", "train.epochs=1", "--set", "train.tensorboard=false")
    assert result.returncode == 0, result.stderr
    assert not (out / "tensorboard").exists()


def _record(epoch: int, loss: float) -> dict:
    return {"epoch": epoch, "loss": loss, "task_loss": loss, "reg_loss": 0.0, "valid_rocauc": 0.5, "lr": 0.1, "routing": {"0": {"entropy": 1.0}}}


def test_a_resumed_run_replaces_the_events_after_its_checkpoint(tmp_path):
    routes = {0: np.full((2, 3), 1 / 3)}
    first = tb.TensorBoardLog(tmp_path, None)
    for epoch in (1, 2, 3):  # epochs 2 and 3 were logged, then the run died with its checkpoint at epoch 1
        first.log_epoch(_record(epoch, 10.0 + epoch), "rocauc", {"a": 0.5}, routes)
    first.close()
    resumed = tb.TensorBoardLog(tmp_path, None, resume_epoch=1)
    for epoch in (2, 3):
        resumed.log_epoch(_record(epoch, 20.0 + epoch), "rocauc", {"a": 0.5}, routes)
    resumed.close()
    losses = [(e.step, e.value) for e in _events(tmp_path / tb.FOLDER).Scalars("loss/total")]
    assert losses == [(1, 11.0), (2, 22.0), (3, 23.0)]


def test_without_the_package_one_line_or_a_clear_refusal(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(tb, "tensorboard_available", lambda: False)
    log = tb.TensorBoardLog(tmp_path, None)  # the default: say how to enable it, write nothing
    assert "pip install 'cft[tensorboard]'" in capsys.readouterr().err.replace("\n", "")
    log.log_epoch(_record(1, 1.0), "rocauc", {}, {})
    assert not (tmp_path / tb.FOLDER).exists()
    with pytest.raises(CftError, match="tensorboard package is not installed"):
        tb.TensorBoardLog(tmp_path, True)
