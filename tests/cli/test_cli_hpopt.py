"""`cft hpopt` through the real CLI: bad --space strings fail before anything runs; a 3-trial TPE
search writes best.yaml (the best trial's values, a recipe `cft train` accepts), the trial table and plot."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml
from conftest import TINY_RECIPE, assert_user_error, run_cli, run_cli_inprocess


def _recipe(tmp_path: Path, epochs: int = 1) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY_RECIPE.replace("epochs: 3", f"epochs: {epochs}"))
    return path


@pytest.mark.parametrize(
    "space, fragments",
    [
        (["routing.temperature"], ["--space 'routing.temperature'", "no `=`", "KIND one of float:LOW:HIGH"]),
        (["routing.temperature=exp:0.1:10"], ["unknown kind 'exp'", "log:LOW:HIGH"]),
        (["routing.temperature=log:10:0.1"], ["LOW must be smaller than HIGH"]),
        (["routing.temperature=log:0:10"], ["log: needs LOW > 0"]),
        (["routing.temperature=float:0.1"], ["float: needs LOW:HIGH"]),
        (["adapters.rank=int:2:8.5"], ["LOW and HIGH must be integers"]),
        (["adapters.rnak=int:2:8"], ["--space adapters.rnak", "did you mean `rank`"]),
        (["adapters.rank=int:4:64"], ["--space adapters.rank: the value 64", "must be <= backbone.hidden (32)"]),
        (["prior.source=cat:labels,bogus"], ["--space prior.source: the value bogus"]),
        (["prior.source=cat:"], ["cat: needs at least one value"]),
        (["adapters.layers=cat:[0,1],all"], ["is a list or mapping"]),
        (["seed=int:0:9"], ["--space seed", "--seeds"]),
        (["adapters.rank=int:2:4", "adapters.rank=int:4:8"], ["--space adapters.rank is given twice"]),
        ([], ["Nothing to search", "--space"]),
    ],
    ids=["no-equals", "unknown-kind", "reversed", "log-zero", "one-bound", "int-float", "unknown-key", "cross-field", "bad-choice",
         "empty-cat", "list-choice", "seed", "twice", "none"],
)
def test_bad_spaces_fail_before_anything_runs(tmp_path, space, fragments):
    recipe = _recipe(tmp_path)
    out = tmp_path / "search"
    args = [a for s in space for a in ("--space", s)]
    assert_user_error(run_cli_inprocess("hpopt", recipe, *args, "--trials", "3", "-o", out), *fragments)
    assert not out.exists(), "nothing may be written for a bad --space"


def test_bad_sampler_and_bad_storage_exit_2(tmp_path):
    recipe = _recipe(tmp_path)
    space = ["--space", "routing.temperature=log:0.1:10"]
    assert_user_error(run_cli_inprocess("hpopt", recipe, *space, "--sampler", "cmaes", "-o", tmp_path / "a"), "--sampler 'cmaes'", "tpe")
    assert_user_error(run_cli_inprocess("hpopt", recipe, *space, "--storage", "not-a-url", "-o", tmp_path / "b"), "not a database URL", "postgresql://")
    assert_user_error(run_cli_inprocess("hpopt", recipe, *space, "--worker", "-o", tmp_path / "c"), "--worker needs --storage")


def test_three_trials_write_the_best_recipe_which_cft_train_accepts(tmp_path):
    recipe = _recipe(tmp_path, epochs=1)
    out = tmp_path / "search"
    spaces = ["routing.temperature=log:0.1:10", "adapters.rank=int:2:8", "prior.source=cat:labels,identity"]
    args = ["hpopt", recipe, *(a for s in spaces for a in ("--space", s)), "--trials", "3", "--set", "train.threads=1", "-o", out]
    result = run_cli(*args)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ran 3 run(s)" in " ".join(result.stdout.split())
    with open(out / "trials.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 3 and {r["state"] for r in rows} == {"finished"}, rows
    assert len({(r["routing.temperature"], r["adapters.rank"], r["prior.source"]) for r in rows}) == 3, "three different trials"
    for r in rows:
        assert 0.1 <= float(r["routing.temperature"]) <= 10 and 2 <= int(r["adapters.rank"]) <= 8 and r["prior.source"] in ("labels", "identity")
        assert 0.0 <= float(r["objective"]) <= 1.0 and 0.0 <= float(r["test"]) <= 1.0
    best = max(rows, key=lambda r: float(r["objective"]))  # ROC-AUC: higher is better
    chosen = yaml.safe_load((out / "best.yaml").read_text())
    assert chosen["routing"]["temperature"] == float(best["routing.temperature"])
    assert chosen["adapters"]["rank"] == int(best["adapters.rank"])
    assert chosen["prior"]["source"] == best["prior.source"]
    assert f"(trial {best['trial']}," in (out / "best.yaml").read_text()
    assert (out / "plots" / "trials.png").read_bytes()[:4] == b"\x89PNG"
    md = (out / "trials.md").read_text()
    assert f"Best: trial {best['trial']}," in md
    assert json.loads((out / "hpopt.json").read_text())["metric"] == "rocauc"

    again = run_cli(*args)  # the study is done: nothing runs again
    assert again.returncode == 0 and "ran 0 run(s)" in " ".join(again.stdout.split()), again.stdout + again.stderr

    trained = run_cli("train", out / "best.yaml", "--set", "train.threads=1", "-o", tmp_path / "best-run")
    assert trained.returncode == 0, trained.stdout + trained.stderr
    ran = yaml.safe_load((tmp_path / "best-run" / "recipe.yaml").read_text())
    assert ran["adapters"]["rank"] == int(best["adapters.rank"]) and ran["prior"]["source"] == best["prior.source"]


def test_an_interrupted_search_resumes_its_trial_from_the_checkpoint(tmp_path):
    """SIGTERM to the search during trial 0's second epoch (a hook in that run sends it after its
    15th optimiser step, 10 per epoch, and waits for the forwarded SIGINT): exit 143; the same command
    then runs trial 0's values again first (enqueued again), with --resume, and finishes the search."""
    from signal_hook import fired, signal_at_step_env

    recipe = _recipe(tmp_path, epochs=2)
    out = tmp_path / "search"
    args = ["hpopt", str(recipe), "--space", "train.lr=log:0.001:0.01", "--trials", "2", "--set", "train.threads=1", "-o", str(out)]
    hook = tmp_path / "hook"
    env = signal_at_step_env(hook, step=15, sig="SIGTERM", target="parent", argv_has=("train", "trials/"), wait_for_sigint=True)
    first = run_cli(*args, env=env)
    assert len(fired(hook)) == 1, fired(hook)
    assert first.returncode == 143, first.stdout + first.stderr
    assert "Search interrupted (SIGTERM)" in first.stderr and "Traceback" not in first.stderr
    with open(out / "trials.csv", newline="") as fh:
        states = [r["state"] for r in csv.DictReader(fh)]
    assert states == ["interrupted"], states
    resumed = run_cli(*args)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    with open(out / "trials.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["state"] for r in rows] == ["interrupted", "finished", "finished"], rows
    assert rows[0]["train.lr"] == rows[1]["train.lr"], "the interrupted trial's values ran again first"
    log = Path(rows[1]["folder"]) / "seed-0.log"
    attempts = [line for line in log.read_text().splitlines() if line.startswith("=== attempt")]
    assert len(attempts) == 2 and "--resume" in attempts[1], attempts
