"""Shared fixtures: the real datasets in ../shared/data, an isolated cache, CLI runners."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from skip_guard import pytest_collectreport, pytest_runtest_logreport, pytest_sessionfinish, pytest_terminal_summary  # noqa: F401 (hooks)

# Tiny test models gain nothing from several threads, and on a small shared machine OpenMP threads
# that spin against each other made a 1-second run take 15 s. Runs are bit-identical either way
# (checked by the resume tests). Set before torch is imported, for this process and the CLIs it starts.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# The in-process CLI runner prints through cft.console's rich consoles, which read COLUMNS once, when
# cft.console is first imported: fix it before any test imports cft, so that tables and wrapped
# messages do not depend on which test (or pytest-xdist worker) happened to import it first.
os.environ.setdefault("COLUMNS", "200")

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


def run_cli_inprocess(*args: str) -> subprocess.CompletedProcess:
    """The same CLI app, invoked in this process (no interpreter start-up): for the many refusal
    cases; end-to-end behaviour (exit code, no traceback) stays covered by `run_cli` tests."""
    from typer.testing import CliRunner

    from cft.cli import get_app

    result = CliRunner().invoke(get_app(), [str(a) for a in args], env={"COLUMNS": "200"})
    stderr = result.stderr if result.stderr_bytes is not None else ""
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        import traceback

        stderr += "".join(traceback.format_exception(result.exception))
    return subprocess.CompletedProcess([str(a) for a in args], result.exit_code, result.stdout, stderr)


def assert_user_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    """Exit code 2, the fragments in stderr, and no Python traceback anywhere."""
    output = result.stdout + result.stderr
    assert result.returncode == 2, f"exit {result.returncode}\n{output}"
    assert "Traceback" not in output, output
    for fragment in fragments:
        assert fragment in output, f"{fragment!r} not in:\n{output}"


@pytest.fixture()
def unwritable_parent(tmp_path) -> Path:
    """A folder in which nothing can be created, even by root (who ignores permission bits)."""
    if os.geteuid() != 0:
        folder = tmp_path / "readonly"
        folder.mkdir()
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    probe = Path("/sys/cft-reliability-probe")
    try:
        probe.mkdir()
    except OSError:
        yield Path("/sys")
        return
    probe.rmdir()
    pytest.skip("running as root with no read-only location to write into (/sys accepted a folder)")


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


TINY_PART_TASKS = (["halogen_any", "has_Cl", "has_Br", "ketone"], ["ester", "ether", "aromatic_rings_ge2", "molwt_gt_300"])


@pytest.fixture(scope="session")
def tiny_parts(tmp_path_factory):
    """Two tiny bundles trained through the CLI on one frozen backbone, on disjoint builtin tasks:
    A (rank 4) and B (rank 2, adapter scale 0.5: composition must pad ranks and fold scales)."""
    import json

    folder = tmp_path_factory.mktemp("parts")
    recipe = folder / "tiny.yaml"
    recipe.write_text(TINY_RECIPE.replace("limit: 400", "limit: 300").replace("epochs: 3", "epochs: 2"))
    a, b = folder / "A", folder / "B"
    ra = run_cli("train", recipe, "-o", a, "--set", f"data.tasks={json.dumps(TINY_PART_TASKS[0])}")
    assert ra.returncode == 0, ra.stderr
    rb = run_cli("train", recipe, "-o", b, "--set", f"data.tasks={json.dumps(TINY_PART_TASKS[1])}",
                 "--set", "adapters.rank=2", "--set", "adapters.scale=0.5")
    assert rb.returncode == 0, rb.stderr
    smiles = folder / "mols.csv"
    smiles.write_text("smiles,id\nCCO,1\nc1ccccc1Cl,2\nnot_a_smiles,3\nCC(=O)OCC,4\nBrc1ccc(cc1)C(=O)C,5\nCCOC(=O)c1ccccc1,6\n")
    return {"folder": folder, "recipe": recipe, "A": a / "bundle.safetensors", "B": b / "bundle.safetensors", "smiles": smiles}
