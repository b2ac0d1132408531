"""Reproducible by default: two runs of one recipe and seed at two CPU threads give identical tensors."""

from __future__ import annotations

import numpy as np
import torch
from conftest import run_cli
from safetensors.numpy import load_file

from cft.recipe.schema import PretrainConfig
from cft.spec import BackboneSpec
from cft.training.pretrain import pretrain_key

# the quickstart, smaller: at two threads and without deterministic kernels these runs differed in the
# last bits of the pretrained backbone and of the bundle from run to run (measured on 2026-12-02)
SMALL = ["--set", "train.epochs=1", "--set", "train.threads=2", "--set", "backbone.pretrain.epochs=1", "--set", "backbone.pretrain.cache=false",
         "--set", "data.limit=1500", "--set", "backbone.pretrain.data.limit=1500"]


def _tensors(path) -> dict[str, np.ndarray]:
    return load_file(str(path))


def test_two_runs_at_two_threads_give_identical_backbones_and_bundles(tmp_path):
    runs = []
    for i in (1, 2):
        out = tmp_path / f"run{i}"
        result = run_cli("train", "recipes/quickstart.yaml", "-o", out, *SMALL, env={"OMP_NUM_THREADS": "2"})
        assert result.returncode == 0, result.stderr
        runs.append(out)
    for name in ("backbone.safetensors", "bundle.safetensors"):
        first, second = _tensors(runs[0] / name), _tensors(runs[1] / name)
        assert first.keys() == second.keys()
        differing = [k for k in first if first[k].tobytes() != second[k].tobytes()]
        assert not differing, f"{name}: {len(differing)} tensors differ between two runs, e.g. {differing[:3]}"


def test_the_pretraining_cache_key_tells_deterministic_kernels_apart():
    """A backbone cached by a run without deterministic kernels is not reused by a run with them."""
    cfg, spec, identity = PretrainConfig(method="masking"), BackboneSpec(), {"name": "x", "sha256": "0"}
    before = torch.are_deterministic_algorithms_enabled()
    try:
        keys = []
        for enabled in (True, False, True):
            torch.use_deterministic_algorithms(enabled, warn_only=True)
            keys.append(pretrain_key(cfg, spec, 0, identity))
    finally:
        torch.use_deterministic_algorithms(before, warn_only=True)
    assert keys[0] != keys[1], "the key ignores train.deterministic"
    assert keys[0] == keys[2], "the key is not stable"


def test_deterministic_kernels_leave_new_memory_unfilled():
    """torch's deterministic mode would fill every new tensor with NaN first (a wasted pass over
    memory); cft switches that off with it, and back to torch's default when it is switched off."""
    import torch

    from cft.training.seeding import use_deterministic_kernels

    try:
        use_deterministic_kernels(True)
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.utils.deterministic.fill_uninitialized_memory is False
    finally:
        use_deterministic_kernels(False)
    assert not torch.are_deterministic_algorithms_enabled()
    assert torch.utils.deterministic.fill_uninitialized_memory is True
