"""Long work shows rich progress bars with an ETA on a terminal, and nothing of them elsewhere."""

from __future__ import annotations

import re

from conftest import run_cli

# one pretraining epoch and one training epoch on 600 of the embedded molecules, featurised cold
SMALL = ["--set", "train.epochs=1", "--set", "backbone.pretrain.epochs=1", "--set", "backbone.pretrain.cache=false",
         "--set", "data.limit=600", "--set", "backbone.pretrain.data.limit=600"]
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
# a rich bar line: description, bar, "done/total", elapsed, remaining (the ETA)
BAR = r"{}.*?\b(\d+)/(\d+)\s+\d+:\d\d:\d\d\s+(?:-:--:--|\d+:\d\d:\d\d)"


def _train(tmp_path, tty: bool):
    env = {"CFT_CACHE_DIR": str(tmp_path / "cache"), "TTY_COMPATIBLE": "1" if tty else "0"}
    return run_cli("train", "recipes/quickstart.yaml", "-o", tmp_path / "run", *SMALL, env=env)


def test_featurisation_pretraining_and_epochs_show_bars_with_an_eta_on_a_terminal(tmp_path):
    result = _train(tmp_path, tty=True)
    assert result.returncode == 0, result.stderr
    text = ANSI.sub("", result.stderr)
    for description in (r"featurising", r"pretrain \(masking\) epoch 1/1", r"epoch 1/1"):
        matches = re.findall(BAR.format(description), text)
        assert matches, f"no progress bar for {description!r} in:\n{text[-2000:]}"
        # the bar advanced to its end: the last frame shows done == total
        assert any(done == total for done, total in matches), f"{description!r} never completed: {matches[-3:]}"


def test_no_bar_frames_when_stderr_is_not_a_terminal(tmp_path):
    result = _train(tmp_path, tty=False)
    assert result.returncode == 0, result.stderr
    assert not re.search(BAR.format("featurising"), result.stderr)
    assert "\x1b[" not in result.stderr
