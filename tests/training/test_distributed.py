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


@pytest.fixture(scope="module")
def two_process_run(single_run, tmp_path_factory):
    recipe, _ = single_run
    folder = tmp_path_factory.mktemp("dist2")
    run = folder / "two"
    result = run_cli("train", recipe, "-o", run, "--nproc", "2", timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    return folder, run


def _metrics(run) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k != "seconds"} for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_two_gloo_processes_match_one_process(single_run, two_process_run):
    _, one = single_run
    folder, run = two_process_run
    two = json.loads((run / "summary.json").read_text())
    assert two["world_size"] == 2 and one["world_size"] == 1
    assert abs(two["valid"]["mean"] - one["valid"]["mean"]) < TOLERANCE
    assert abs(two["test"]["mean"] - one["test"]["mean"]) < TOLERANCE
    assert two["best_epoch"] == one["best_epoch"]
    # only rank 0 wrote: one run folder, nothing else appeared beside it
    assert sorted(p.name for p in folder.iterdir()) == ["two"]
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 3


def test_torchrun_launch_and_resume_from_the_same_checkpoint(single_run, two_process_run, tmp_path):
    """torchrun, 2 gloo ranks: rank 0 gets SIGINT after its 15th optimiser step (epoch 2 of 3; a hook,
    so it is deterministic), both ranks agree to stop at that batch, the checkpoint is saved; the same
    torchrun command with --resume finishes the run as a 2-process world, with the same metrics, epoch
    by epoch, and the same bundle bytes as an uninterrupted 2-process run."""
    from signal_hook import fired, signal_at_step_env

    recipe, _ = single_run
    _, straight = two_process_run
    run = tmp_path / "tr"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "cft", "train", str(recipe), "-o", str(run)]
    env = {**os.environ, "COLUMNS": "200", "OMP_NUM_THREADS": "1"}
    hook = tmp_path / "hook"
    first = subprocess.run(command, check=False, cwd=REPO, env={**env, **signal_at_step_env(hook, step=15, sig="SIGINT", env_has={"LOCAL_RANK": "0"})},
                           capture_output=True, text=True, timeout=600)
    assert [(f["rank"], f["step"]) for f in fired(hook)] == [("0", 15)], fired(hook)
    assert first.returncode != 0, "torchrun reports the interrupted workers"
    said = " ".join(first.stderr.split())
    assert "Interrupted (SIGINT) at epoch 2, batch 5" in said and "--resume" in said, first.stderr[-3000:]
    assert (run / "checkpoint.pt").exists() and not (run / "summary.json").exists()
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1
    resumed = subprocess.run(command + ["--resume"], check=False, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert "at epoch 2, batch 5" in " ".join(resumed.stderr.split()), resumed.stderr[-3000:]
    two = json.loads((run / "summary.json").read_text())
    assert two["world_size"] == 2
    assert [m["epoch"] for m in _metrics(run)] == [1, 2, 3]
    losses = ("loss", "task_loss", "reg_loss")  # sums over ranks, added in another order after the resume
    def without_losses(rows):
        return [{k: v for k, v in m.items() if k not in losses} for m in rows]

    assert without_losses(_metrics(run)) == without_losses(_metrics(straight))
    for a, b in zip(_metrics(run), _metrics(straight)):
        assert [a[k] for k in losses] == pytest.approx([b[k] for k in losses], rel=1e-12, abs=1e-15), \
            (a["epoch"], "the epoch's logged loss counts every rank's batches once")
    assert (run / "bundle.safetensors").read_bytes() == (straight / "bundle.safetensors").read_bytes()
    # a finished run resumed again is left alone, on every rank
    again = subprocess.run(command + ["--resume"], check=False, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "already finished" in again.stderr, again.stderr


def test_too_many_processes_is_refused_before_training(tiny_recipe, tmp_path):
    assert_user_error(run_cli("train", tiny_recipe, "-o", tmp_path / "r", "--nproc", "512"), "more processes than this machine has")
    assert not (tmp_path / "r").exists()


def test_nccl_without_cuda_is_refused_before_training(tiny_recipe, tmp_path):
    # no GPU visible to the CLI, also on a machine that has one (the test never skips)
    result = run_cli("train", tiny_recipe, "-o", tmp_path / "r", "--nproc", "2", "--set", "train.dist_backend=nccl", env={"CUDA_VISIBLE_DEVICES": ""})
    assert_user_error(result, "nccl", "needs CUDA")
    assert not (tmp_path / "r").exists()


def test_missing_rendezvous_endpoint_is_refused(tiny_recipe, tmp_path):
    env = {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0", "MASTER_ADDR": "", "MASTER_PORT": ""}
    result = run_cli("train", tiny_recipe, "-o", tmp_path / "r", env=env)
    assert_user_error(result, "no rendezvous endpoint")
