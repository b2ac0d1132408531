"""Shared fixtures: the real datasets in ../shared/data, an isolated cache, CLI runners."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

# Tiny test models gain nothing from several threads, and on a small shared machine OpenMP threads
# that spin against each other made a 1-second run take 15 s. Runs are bit-identical either way
# (checked by the resume tests). Set before torch is imported, for this process and the CLIs it starts.
os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = (REPO / ".." / "shared" / "data").resolve()


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Every test session gets its own cache (featurisation, pretrained backbones), unless
    CFT_TEST_CACHE points at a reusable one (local speed-up)."""
    cache = os.environ.get("CFT_TEST_CACHE") or str(tmp_path_factory.mktemp("cft-cache"))
    os.environ["CFT_CACHE_DIR"] = cache
    os.environ.pop("CFT_DATA_ROOT", None)
    yield cache


@pytest.fixture(scope="session")
def data_root() -> Path:
    if not (SHARED_DATA / "tox21.csv").exists():
        pytest.skip(f"the shared datasets are not at {SHARED_DATA}")
    return SHARED_DATA


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: float = 900) -> subprocess.CompletedProcess:
    """Run the real `cft` CLI in a subprocess (python -m cft), capturing output."""
    # one thread per run: tiny models gain nothing from more, and on a busy machine OpenMP
    # threads of several processes spinning against each other slow everything down tenfold
    full_env = {**os.environ, "COLUMNS": "200", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "cft", *map(str, args)],
        cwd=cwd or REPO, env=full_env, capture_output=True, text=True, timeout=timeout,
    )


def assert_user_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    """Exit code 2, the fragments in stderr, and no Python traceback anywhere."""
    output = result.stdout + result.stderr
    assert result.returncode == 2, f"exit {result.returncode}\n{output}"
    assert "Traceback" not in output, output
    for fragment in fragments:
        assert fragment in output, f"{fragment!r} not in:\n{output}"


TINY_RECIPE = """
description: tiny settings for tests
seed: 0
data:
  source: builtin
  limit: 400
  tasks: ["halogen_any", "has_Cl", "has_Br", "ketone", "ester", "ether", "aromatic_rings_ge2", "molwt_gt_300"]
backbone:
  num_layers: 2
  hidden: 32
  dropout: 0.0
adapters:
  num_adapters: 3
  rank: 4
prior:
  min_support: 5
train:
  epochs: 3
  batch_size: 32
  lr: 0.005
  patience: null
eval:
  metric: rocauc
"""


@pytest.fixture()
def tiny_recipe(tmp_path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY_RECIPE)
    return path
