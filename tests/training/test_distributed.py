"""Multi-process training on torch.distributed (gloo on CPU), launched like torchrun."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import REPO, TINY_RECIPE, assert_user_error, run_cli

# Frozen backbone (BatchNorm in eval mode) and complete labels: two ranks of 16 molecules with
# averaged gradients compute the same update as one process with 32, up to float rounding.
TOLERANCE = 1e-3


@pytest.fixture(scope="module")
def single_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dist")
    recipe = folder / "tiny.yaml"
    recipe.write_text(TINY_RECIPE)
    run = folder / "one"
    result = run_cli("train", recipe, "-o", run)
    assert result.returncode == 0, result.stderr
    return recipe, json.loads((run / "summary.json").read_text())


def test_two_gloo_processes_match_one_process(single_run, tmp_path):
    recipe, one = single_run
    run = tmp_path / "two"
    result = run_cli("train", recipe, "-o", run, "--nproc", "2", timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    two = json.loads((run / "summary.json").read_text())
    assert two["world_size"] == 2 and one["world_size"] == 1
    assert abs(two["valid"]["mean"] - one["valid"]["mean"]) < TOLERANCE
    assert abs(two["test"]["mean"] - one["test"]["mean"]) < TOLERANCE
    assert two["best_epoch"] == one["best_epoch"]
    # only rank 0 wrote: one run folder, nothing else appeared beside it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["two"]
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 3


def test_torchrun_launch_and_resume_from_the_same_checkpoint(single_run, tmp_path):
    recipe, _ = single_run
    run = tmp_path / "tr"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "cft", "train", str(recipe), "-o", str(run), "--set", "train.epochs=2"]
    env = {**os.environ, "COLUMNS": "200"}
    first = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr
    # continue the finished 2-epoch run to 3 epochs is a different recipe: refused on every rank
    resumed = subprocess.run(command[:-2] + ["--set", "train.epochs=2", "--resume"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert "already finished" in resumed.stderr


def test_too_many_processes_is_refused_before_training(tiny_recipe, tmp_path):
    assert_user_error(run_cli("train", tiny_recipe, "-o", tmp_path / "r", "--nproc", "512"), "more processes than this machine has")
    assert not (tmp_path / "r").exists()


def test_nccl_without_cuda_is_refused_before_training(tiny_recipe, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    result = run_cli("train", tiny_recipe, "-o", tmp_path / "r", "--nproc", "2", "--set", "train.dist_backend=nccl")
    assert_user_error(result, "nccl", "needs CUDA")
    assert not (tmp_path / "r").exists()


def test_missing_rendezvous_endpoint_is_refused(tiny_recipe, tmp_path):
    env = {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0", "MASTER_ADDR": "", "MASTER_PORT": ""}
    result = run_cli("train", tiny_recipe, "-o", tmp_path / "r", env=env)
    assert_user_error(result, "no rendezvous endpoint")
