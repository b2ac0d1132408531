"""Shell completions: committed scripts match what the app generates, and they parse."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from conftest import REPO

from cft.completions import main, scripts


def test_completion_scripts_are_current():
    assert main(["--check", str(REPO / "completions")]) == 0, "run `make completions` and commit the result"


def test_completion_scripts_cover_every_command():
    generated = scripts()
    for command in ("train", "eval", "recipes", "validate"):
        assert command in generated["cft.bash"] and command in generated["cft.fish"] and command in generated["_cft.zsh"]
    assert "--output-dir" in generated["cft.bash"]


def test_bash_script_parses_and_completes():
    bash = shutil.which("bash")
    if not bash:
        pytest.skip("bash not installed")
    script = REPO / "completions" / "cft.bash"
    probe = f'source {script}; COMP_WORDS=(cft tr); COMP_CWORD=1; _cft; echo "${{COMPREPLY[@]}}"; COMP_WORDS=(cft train --out); COMP_CWORD=2; _cft; echo "${{COMPREPLY[@]}}"'
    out = subprocess.run([bash, "-c", probe], capture_output=True, text=True, check=True).stdout.splitlines()
    assert out[0] == "train" and out[1] == "--output-dir"


@pytest.mark.parametrize("shell,name", [("zsh", "_cft.zsh"), ("fish", "cft.fish")])
def test_other_shells_parse(shell, name):
    exe = shutil.which(shell)
    if not exe:
        pytest.skip(f"{shell} not installed")
    subprocess.run([exe, "-n", str(REPO / "completions" / name)], check=True)
