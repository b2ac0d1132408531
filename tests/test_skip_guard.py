"""tests/skip_guard.py: a session with a skip whose reason is not an absent optional shell fails."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent

TWO_TESTS = '''
import pytest


def test_optional_shell():
    pytest.skip("zsh not installed")


def test_other():
    pytest.skip("{reason}")
'''


MODULE_SKIP = '''
import pytest

pytest.skip("{reason}", allow_module_level=True)


def test_never_collected():
    pass
'''


def _session(folder: Path, reason: str, *args: str, module_skip: bool = False, **env: str) -> subprocess.CompletedProcess:
    folder.mkdir()
    (folder / "conftest.py").write_text("from skip_guard import *  # noqa: F403\n")
    (folder / "test_two.py").write_text(TWO_TESTS.format(reason=reason))
    if module_skip:
        (folder / "test_module.py").write_text(MODULE_SKIP.format(reason=reason))
    full_env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]), **env}
    full_env.pop("CFT_ALLOW_SKIPS", None)
    full_env.update(env)
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rs", "-c", os.devnull, *args, str(folder)],
                          cwd=folder, env=full_env, capture_output=True, text=True, timeout=120, check=False)


def test_an_unexpected_skip_fails_the_session(tmp_path):
    result = _session(tmp_path / "bad", "the shared datasets are not at /nowhere")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "unexpected skips" in result.stdout and "test_two.py::test_other: the shared datasets are not at /nowhere" in result.stdout
    assert "test_optional_shell:" not in result.stdout.split("unexpected skips")[1], "the zsh skip is allowed"


def test_only_allowed_skips_pass_and_the_escape_hatch_is_explicit(tmp_path):
    assert _session(tmp_path / "good", "fish not installed").returncode == 0
    allowed = _session(tmp_path / "hatch", "no data here", CFT_ALLOW_SKIPS="1")
    assert allowed.returncode == 0 and "allowed by CFT_ALLOW_SKIPS=1" in allowed.stdout, allowed.stdout


@pytest.mark.parametrize("reason", ["bash not installed", "zsh not installed (yet)", "the run finished before the interrupt arrived"])
def test_the_allowed_list_is_only_zsh_and_fish(reason):
    from skip_guard import ALLOWED_SKIPS

    assert not any(p.match(reason) for p in ALLOWED_SKIPS)


@pytest.mark.parametrize("module_skip", [False, True], ids=["test-skip", "module-skip"])
def test_the_guard_holds_under_parallel_workers(tmp_path, module_skip):
    """`make test` runs the suite on pytest-xdist workers: a skip in a worker (of a test, or of a
    whole module at collection) still reaches the controller's hooks and fails the session."""
    result = _session(tmp_path / "bad", "the shared datasets are not at /nowhere", "-n", "2", module_skip=module_skip)
    assert result.returncode == 1, result.stdout + result.stderr
    where = "test_module.py" if module_skip else "test_two.py::test_other"
    assert "unexpected skips" in result.stdout and f"{where}: the shared datasets are not at /nowhere" in result.stdout, result.stdout
    assert _session(tmp_path / "good", "fish not installed", "-n", "2", module_skip=module_skip).returncode == 0
