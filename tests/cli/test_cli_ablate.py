"""`cft ablate` through the real CLI: bad grids fail before anything runs, variant counts,
interrupt + resume, a crashing variant, parallel jobs."""

from __future__ import annotations

import csv
import json
import os
from datetime import datetime
from pathlib import Path

import pytest
from conftest import TINY_RECIPE, assert_user_error, run_cli

from cft.errors import CftError
from cft.sweep.plan import parse_values, variant_name
from cft.sweep.scheduler import pick_gpu, visible_gpus


def _recipe(tmp_path: Path, epochs: int = 1) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY_RECIPE.replace("epochs: 3", f"epochs: {epochs}"))
    return path


def _rows(folder: Path) -> list[dict]:
    with open(folder / "ablation.csv", newline="") as fh:
        return list(csv.DictReader(fh))


# --------------------------------------------------------------------------- no training


def test_values_split_on_commas_outside_brackets_and_quotes():
    assert parse_values("[0,1],all,[2]", "--grid x") == [[0, 1], "all", [2]]
    assert parse_values("'a,b.npy', c.npy", "--grid x") == ["a,b.npy", "c.npy"]
    assert parse_values("{a: 1, b: 2},3", "--grid x") == [{"a": 1, "b": 2}, 3]
    for broken in ("[0,1", "0,1]", "a,,b", "'a,b"):
        with pytest.raises(CftError, match="cannot read .* as a comma-separated list"):
            parse_values(broken, "--grid x")


def test_variant_names_are_stable_and_readable():
    assert variant_name({}) == "base"
    assert variant_name({"routing.temperature": 0.3, "adapters.rank": 4}) == "adapters.rank=4__routing.temperature=0.3"
    assert variant_name({"adapters.layers": [0, 1]}) == "adapters.layers=0-1"
    odd = variant_name({"prior.path": "dir/a,b.npy"})
    assert odd.startswith("prior.path=dir_a_b.npy-") and "/" not in odd
    long = variant_name({f"train.k{i}": 0.000123 for i in range(12)})
    assert len(long) <= 96 and long == variant_name({f"train.k{i}": 0.000123 for i in range(12)})


def test_one_gpu_per_job_where_there_are_several():
    assert visible_gpus("auto", count=1, env="") == [] and visible_gpus("cpu", count=4, env="") == []
    assert visible_gpus("cuda:1", count=4, env="") == [], "a pinned device is left alone"
    assert visible_gpus("auto", count=3, env="") == ["0", "1", "2"]
    assert visible_gpus("cuda", count=2, env="4,6") == ["4", "6"], "the parent's own device ids"
    gpus = ["0", "1"]
    assert pick_gpu(gpus, []) == "0" and pick_gpu(gpus, ["0"]) == "1" and pick_gpu(gpus, ["0", "1"]) == "0"
    assert pick_gpu(gpus, ["1", "0", "1"]) == "0" and pick_gpu([], ["0"]) is None


def test_variant_folders_stay_inside_the_sweep(tmp_path):
    from cft.sweep.folder import SweepFolder
    from cft.sweep.plan import Variant

    folder = SweepFolder(tmp_path / "sweep")
    assert folder.variant_dir(Variant("adapters.rank=4", {}, {}, None)) == tmp_path / "sweep" / "variants" / "adapters.rank=4"
    for name in ("../escape", "a/b", ".."):
        with pytest.raises(CftError, match="cannot be used as a file name"):
            folder.variant_dir(Variant(name, {}, {}, None))
    (tmp_path / "sweep").mkdir()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "sweep" / "variants").mkdir()
    (tmp_path / "sweep" / "variants" / "base").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(CftError, match="outside"):
        folder.variant_dir(Variant("base", {}, {}, None))


@pytest.mark.parametrize(
    "grid, fragments",
    [
        (["--grid", "adapters.rnak=1,2"], ["--grid adapters.rnak", "did you mean `rank`"]),
        (["--grid", "adapters.rank=4,abc"], ["--grid adapters.rank=abc", "must be an integer"]),
        (["--grid", "routing.temperature="], ["--grid routing.temperature", "empty"]),
        (["--grid", "prior.source=labels,,identity"], ["--grid prior.source", "two commas in a row"]),
        (["--grid", "adapters.rank=4,64"], ["adapters.rank=64", "adapters.rank: must be <= backbone.hidden (32)"]),
        (["--grid", "adapters.layers=[0,1"], ["--grid adapters.layers", "unclosed bracket"]),
        (["--grid", "seed=1,2"], ["--grid seed", "--seeds"]),
        (["--grid", "adapters.rank=1,2", "--grid", "adapters.rank=4"], ["--grid adapters.rank is given twice"]),
    ],
    ids=["unknown-key", "wrong-type", "empty-list", "empty-value", "invalid-combination", "unbalanced", "seed", "twice"],
)
def test_bad_grids_fail_before_anything_runs(tmp_path, grid, fragments):
    recipe = _recipe(tmp_path)
    out = tmp_path / "sweep"
    assert_user_error(run_cli("ablate", recipe, *grid, "-o", out), *fragments)
    assert not out.exists(), "nothing may be written for a bad grid"


def test_variant_counts(tmp_path):
    recipe = _recipe(tmp_path)  # adapters.rank 4, train.lr 0.005 in the recipe
    grids = ["--grid", "adapters.rank=1,4,8", "--grid", "train.lr=0.001,0.005,0.01"]
    one = run_cli("ablate", recipe, *grids, "--one-at-a-time", "--seeds", "2", "--dry-run", "-o", tmp_path / "s")
    assert one.returncode == 0, one.stderr
    # the recipe itself + 2 other ranks + 2 other learning rates
    assert "5 variants x 2 seed(s) = 10 runs" in " ".join(one.stdout.split())
    product = run_cli("ablate", recipe, *grids, "--dry-run", "-o", tmp_path / "s")
    assert "9 variants x 1 seed(s) = 9 runs" in " ".join(product.stdout.split())
    paper = run_cli("ablate", recipe, "--preset", "paper", "--dry-run", "-o", tmp_path / "s")
    assert paper.returncode == 0, paper.stderr
    # one at a time: 1 + temperature 4 + threshold 4 + reg 4 + rank 4 (4 is the recipe's) + K 5 (3 is the recipe's) + prior 2
    assert "24 variants x 1 seed(s) = 24 runs" in " ".join(paper.stdout.split())
    assert not (tmp_path / "s").exists()


# --------------------------------------------------------------------------- real runs


def test_interrupted_sweep_resumes_without_rerunning_finished_variants(tmp_path):
    """SIGTERM to the sweep while its second variant is in its second epoch, made deterministic: a hook
    in that run (and only in its first attempt) sends SIGTERM to the sweep after its 15th optimiser
    step (epoch 1 has 10) and waits until the sweep has forwarded SIGINT back. The sweep exits 143,
    the same command then runs only the interrupted variant, from its checkpoint."""
    from signal_hook import fired, signal_at_step_env

    recipe = _recipe(tmp_path, epochs=3)
    out = tmp_path / "sweep"
    args = ["ablate", str(recipe), "--grid", "train.lr=0.005,0.01", "--one-at-a-time", "--set", "train.threads=1", "-o", str(out)]
    hook = tmp_path / "hook"
    env = signal_at_step_env(hook, step=15, sig="SIGTERM", target="parent", argv_has=("train.lr=0.01", "train"), wait_for_sigint=True)
    first = out / "variants" / "base" / "seed-0" / "summary.json"
    second = out / "variants" / "train.lr=0.01" / "seed-0"
    stopped = run_cli(*args, env=env)
    assert [(f["step"], f["signal"], f["to"]) for f in fired(hook)] == [(15, "SIGTERM", "parent")], fired(hook)
    err = stopped.stderr
    assert stopped.returncode == 143, f"exit {stopped.returncode}\n{err}"
    assert "Sweep interrupted (SIGTERM)" in err and "Run the same command again to continue" in err and "Traceback" not in err, err
    assert first.exists() and (second / "checkpoint.pt").exists() and not (second / "bundle.safetensors").exists()
    log = (second.parent / "seed-0.log").read_text()
    assert "Interrupted (SIGINT) at epoch 2" in " ".join(log.split()), log[-2000:]
    rows = {r["variant"]: r for r in _rows(out)}
    assert rows["base"]["status"] == "finished" and rows["train.lr=0.01"]["status"] == "pending"
    assert json.loads((second.parent / "seed-0.json").read_text())["status"] == "interrupted"
    stamp = first.stat().st_mtime_ns

    resumed = run_cli(*args)
    assert resumed.returncode == 0, resumed.stderr
    assert "ran 1 run(s)" in " ".join(resumed.stdout.split())
    log = (second.parent / "seed-0.log").read_text()
    attempts = [line for line in log.splitlines() if line.startswith("=== attempt")]
    assert len(attempts) == 2 and "--resume" in attempts[1], attempts
    assert "at epoch 2, batch" in " ".join(log.split("=== attempt")[-1].split()), "the second attempt resumed mid-epoch 2"
    assert [json.loads(line)["epoch"] for line in (second / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]
    assert first.stat().st_mtime_ns == stamp, "the finished variant was run again"
    rows = _rows(out)
    assert [(r["variant"], r["train.lr"], r["seed"], r["status"]) for r in rows] == [
        ("base", "0.005", "0", "finished"), ("train.lr=0.01", "0.01", "0", "finished")]
    for row in rows:
        assert 0.0 <= float(row["test"]) <= 1.0 and 0.0 <= float(row["valid"]) <= 1.0
        assert int(row["trainable_params"]) > 0 and float(row["seconds"]) > 0
        assert row["metric"] == "rocauc"
    assert json.loads((out / "variants" / "train.lr=0.01" / "variant.json").read_text())["knobs"] == {"train.lr": 0.01}
    plot = out / "plots" / "train.lr.png"
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "ablation.md").read_text()
    assert "| train.lr |" in md and "**0.01**" in md and "not finished" not in md


@pytest.mark.parametrize("sig,code", [("SIGINT", 130), ("SIGHUP", 129)])
def test_sweep_interrupted_by_sigint_or_sighup_exits_128_plus_the_signal(tmp_path, sig, code):
    """The other two signals of the sweep's contract (docs/reliability.md, docs/ablate.md): the one
    variant's run sends `sig` to the sweep after its 5th optimiser step (epoch 1 of 2) and waits for
    the forwarded SIGINT. The sweep exits 128 + the signal number (130 Ctrl-C, 129 SIGHUP, as shells
    report them), names the signal, and the run keeps a checkpoint and no bundle."""
    from signal_hook import fired, signal_at_step_env

    recipe = _recipe(tmp_path, epochs=2)
    out = tmp_path / "sweep"
    env = signal_at_step_env(tmp_path / "hook", step=5, sig=sig, target="parent", argv_has=("train.lr=0.01", "train"), wait_for_sigint=True)
    stopped = run_cli("ablate", recipe, "--grid", "train.lr=0.01", "--set", "train.threads=1", "-o", out, env=env)
    assert [(f["step"], f["signal"], f["to"]) for f in fired(tmp_path / "hook")] == [(5, sig, "parent")], fired(tmp_path / "hook")
    err = stopped.stderr
    assert stopped.returncode == code, f"exit {stopped.returncode}\n{err}"
    assert f"Sweep interrupted ({sig})" in err and "Run the same command again to continue" in err and "Traceback" not in err, err
    run = out / "variants" / "train.lr=0.01" / "seed-0"
    assert (run / "checkpoint.pt").exists() and not (run / "bundle.safetensors").exists()
    assert "Interrupted (SIGINT) at epoch 1" in " ".join((run.parent / "seed-0.log").read_text().split())
    assert [r["status"] for r in _rows(out)] == ["pending"]


def test_a_crashing_variant_does_not_stop_parallel_jobs(tmp_path):
    recipe = _recipe(tmp_path, epochs=2)
    out = tmp_path / "sweep"
    missing = tmp_path / "missing.npy"
    result = run_cli("ablate", recipe, "--grid", "prior.source=file,labels,identity", "--set", f"prior.path={missing}",
                     "--jobs", "2", "-o", out)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert "1 of 3 runs failed" in " ".join(result.stderr.split())
    rows = {r["prior.source"]: r for r in _rows(out)}
    assert rows["file"]["status"] == "failed" and "does not exist" in rows["file"]["error"] and str(missing) in rows["file"]["error"]
    assert rows["labels"]["status"] == "finished" and rows["identity"]["status"] == "finished"
    assert "## Failed runs" in (out / "ablation.md").read_text()
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    records = {}
    for name in ("base", "prior.source=identity", "prior.source=file"):
        record = json.loads((out / "variants" / name / "seed-0.json").read_text())
        assert record["threads"] == max(1, cores // 2)
        assert f"train.threads={max(1, cores // 2)}" in record["command"]
        records[name] = record
    assert records["prior.source=file"]["status"] == "failed" and records["prior.source=file"]["returncode"] == 2
    # two training processes at once
    a, b = records["base"], records["prior.source=identity"]
    start = lambda r: datetime.fromisoformat(r["started"])  # noqa: E731
    end = lambda r: datetime.fromisoformat(r["ended"])  # noqa: E731
    assert start(a) < end(b) and start(b) < end(a), (a, b)


@pytest.mark.slow
def test_paper_preset_runs_every_variant(tmp_path):
    """Every value of the paper preset trains (24 tiny runs, two at a time)."""
    recipe = _recipe(tmp_path)
    out = tmp_path / "paper"
    result = run_cli("ablate", recipe, "--preset", "paper", "--set", "data.limit=200", "--jobs", "2", "-o", out, timeout=3600)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = _rows(out)
    assert len(rows) == 24 and {r["status"] for r in rows} == {"finished"}
    keys = ["routing.temperature", "routing.threshold", "train.reg_strength", "adapters.rank", "adapters.num_adapters", "prior.source"]
    for key in keys:
        assert (out / "plots" / f"{key}.png").exists(), key
    by_rank = {r["adapters.rank"]: int(r["trainable_params"]) for r in rows if r["variant"].startswith("adapters.rank=") or r["variant"] == "base"}
    assert by_rank["1"] < by_rank["4"] < by_rank["8"] < by_rank["16"] < by_rank["32"]
    # each run's route entropy at its best epoch: a fraction of ln K where adapters are routed, none for K = 1
    entropy = {r["variant"]: r["route_entropy"] for r in rows}
    assert entropy["adapters.num_adapters=1"] == "" and next(r for r in rows if r["variant"] == "adapters.num_adapters=1")["route_balance"] == ""
    assert all(0.0 <= float(v) <= 1.0 for name, v in entropy.items() if name != "adapters.num_adapters=1"), entropy


def test_tables_and_plots_of_a_product_over_seeds(tmp_path):
    """Runs already in the folder are not rerun; the CSV, the table (mean ± std, best valid first)
    and the plots are made from their summaries (here written by hand: no training)."""
    from cft.recipe.load import recipe_to_yaml
    from cft.sweep.folder import SweepFolder
    from cft.sweep.plan import build_plan, seeded

    recipe = _recipe(tmp_path)
    grids = ["routing.temperature=0.3,3", "adapters.rank=2,4"]
    plan = build_plan(recipe, grids, [], seeds=2)
    out = tmp_path / "sweep"
    folder = SweepFolder(out)
    (out / "ablation.json").parent.mkdir(parents=True)
    (out / "ablation.json").write_text("{}")
    for i, (variant, seed) in enumerate(plan.runs()):
        run = folder.run_dir(variant, seed)
        run.mkdir(parents=True)
        (run / "recipe.yaml").write_text(recipe_to_yaml(seeded(variant.recipe, seed)))
        score = 0.5 + 0.1 * (variant.knobs["adapters.rank"] == 4) + 0.05 * (variant.knobs["routing.temperature"] == 3.0) + 0.01 * seed
        (run / "summary.json").write_text(json.dumps({
            "metric": "rocauc", "best_epoch": 1, "valid": {"mean": score}, "test": {"mean": score - 0.1},
            "params": {"trainable": 100 * variant.knobs["adapters.rank"], "total": 10000, "trainable_fraction": 0.01},
            "seconds": {"train": 1.5, "featurise": 0.1}, "graphs_per_second": 100.0,
            "routing": {"deciding_entropy": 0.2 + 0.7 * (variant.knobs["routing.temperature"] == 3.0) + 0.02 * seed, "deciding_balance": 0.5}}))
    result = run_cli("ablate", recipe, "--grid", grids[0], "--grid", grids[1], "--seeds", "2", "-o", out)
    assert result.returncode == 0, result.stderr
    assert "ran 0 run(s)" in " ".join(result.stdout.split())
    rows = _rows(out)
    assert len(rows) == 8 and {r["status"] for r in rows} == {"finished"}
    assert {(r["routing.temperature"], r["adapters.rank"], r["seed"]) for r in rows} == {
        (t, k, s) for t in ("0.3", "3.0") for k in ("2", "4") for s in ("0", "1")}
    md = (out / "ablation.md").read_text()
    table = [line for line in md.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert table[0].startswith("| 1 | **3.0** | 4 |") and "| 0.6550 ± 0.0071 | 0.5550 ± 0.0071 | 0.91 ± 0.01 | 0.50 ± 0.00 |" in table[0], table
    assert "| route entropy |" in md and {r["route_entropy"] for r in rows if r["routing.temperature"] == "0.3"} == {"0.2", "0.22"}
    assert table[-1].startswith("| 4 | **0.3** | **2** |") and "0.5050 ± 0.0071" in table[-1], table
    for key in ("routing.temperature", "adapters.rank"):
        assert (out / "plots" / f"{key}.png").read_bytes()[:4] == b"\x89PNG"


def test_metric_direction_matches_cft_metrics():
    from cft.spec import HIGHER_IS_BETTER, METRICS

    assert set(HIGHER_IS_BETTER) == set(METRICS)


# --------------------------------------------------------------------------- one study, several processes


def _trials(db: Path, name: str) -> list:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.load_study(study_name=name, storage=f"sqlite:///{db}").get_trials(deepcopy=False)


def _wait_for_study(db: Path, name: str, timeout: float = 120.0) -> None:
    import time

    deadline = time.time() + timeout
    while time.time() < deadline:
        if db.exists():
            try:
                if any(t.state.name == "WAITING" or t.state.name == "RUNNING" for t in _trials(db, name)):
                    return
            except KeyError:
                pass
        time.sleep(0.5)
    raise AssertionError(f"no study {name} in {db} after {timeout} s")


def test_two_workers_on_one_study_train_every_run_exactly_once(tmp_path):
    """A sweep started on one 'machine' (folder A) and a --worker on another (folder B), sharing one
    --storage database: every run is trained by exactly one of them, and A's table lists all."""
    import subprocess
    import sys

    from conftest import REPO

    recipe = _recipe(tmp_path, epochs=1)
    db = tmp_path / "shared" / "sweeps.db"
    storage = f"sqlite:///{db}"
    grid = ["--grid", "train.lr=0.001,0.002,0.005,0.01,0.02,0.05", "--set", "train.threads=1", "--storage", storage, "--study", "lr-sweep"]
    env = {**os.environ, "COLUMNS": "200", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "cft", "ablate", str(recipe), *grid]
    a = subprocess.Popen([*command, "-o", str(tmp_path / "A")], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_study(db, "lr-sweep")
        b = subprocess.run([*command, "--worker", "-o", str(tmp_path / "B")], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
        a_out, a_err = a.communicate(timeout=900)
    finally:
        if a.poll() is None:
            a.kill()
    assert b.returncode == 0, b.stdout + b.stderr
    assert a.returncode == 0, a_out + a_err
    trained = {side: sorted(p.parent.parent.name for p in (tmp_path / side / "variants").glob("*/seed-0/summary.json")) for side in "AB"}
    runs = ["base", "train.lr=0.001", "train.lr=0.002", "train.lr=0.01", "train.lr=0.02", "train.lr=0.05"]
    assert sorted(trained["A"] + trained["B"]) == runs, trained  # each run once, in one of the two folders
    assert trained["A"] and trained["B"], f"both processes should have trained some runs: {trained}"
    trials = _trials(db, "lr-sweep")
    complete = sorted(t.user_attrs["cft_run"] for t in trials if t.state.name == "COMPLETE")
    assert complete == sorted(f"{r}/seed-0" for r in runs), [(t.number, t.state.name, t.user_attrs) for t in trials]
    assert all(t.state.name == "COMPLETE" for t in trials), "no duplicate, failed or waiting trial"
    rows = _rows(tmp_path / "A")  # the leader waited for B's runs and tabulates them from the study
    assert len(rows) == 6 and {r["status"] for r in rows} == {"finished"}, rows
    assert all(0.0 <= float(r["valid"]) <= 1.0 for r in rows)
    # a worker whose command differs from the study's sweep is refused before anything runs
    other = run_cli("ablate", recipe, "--grid", "train.lr=0.001,0.3", "--set", "train.threads=1", "--storage", storage, "--study", "lr-sweep",
                    "--worker", "-o", tmp_path / "C")
    assert_user_error(other, "--worker", "run(s) differ", "adding --worker")
    # and one that names no study there
    missing = run_cli("ablate", recipe, *grid[:-2], "--study", "nope", "--worker", "-o", tmp_path / "D")
    assert_user_error(missing, "no study 'nope'", "without --worker")


def test_a_run_whose_sweep_was_killed_is_retried_after_its_heartbeat_stops(tmp_path):
    """SIGKILL (no handler can run) to the sweep while a run is in flight: its trial stays RUNNING in
    the study. Run again, the heartbeat check finds it stale after the grace period, Optuna's retry
    callback enqueues it again and it is trained once more (with --resume); the finished run is not."""
    import signal as signals
    import time

    from signal_hook import fired, signal_at_step_env

    recipe = _recipe(tmp_path, epochs=2)
    out = tmp_path / "sweep"
    args = ["ablate", str(recipe), "--grid", "train.lr=0.005,0.01", "--one-at-a-time", "--set", "train.threads=1", "-o", str(out)]
    hook = tmp_path / "hook"
    env = {**signal_at_step_env(hook, step=5, sig="SIGKILL", target="parent", argv_has=("train.lr=0.01", "train")), "CFT_SWEEP_HEARTBEAT": "1,3"}
    killed = run_cli(*args, env=env)
    assert killed.returncode == -signals.SIGKILL, killed.stderr
    child = fired(hook)[0]["pid"]
    with pytest.raises(ProcessLookupError):  # the orphaned run (its own session) is stopped by hand, as a lost machine would be
        for _ in range(100):
            os.kill(child, signals.SIGKILL)
            time.sleep(0.1)
    states = {t.user_attrs["cft_run"]: t.state.name for t in _trials(out / "study.db", "sweep")}
    assert states == {"base/seed-0": "COMPLETE", "train.lr=0.01/seed-0": "RUNNING"}, states
    stamp = (out / "variants" / "base" / "seed-0" / "summary.json").stat().st_mtime_ns
    time.sleep(3.5)  # past the grace period

    resumed = run_cli(*args, env={"CFT_SWEEP_HEARTBEAT": "1,3"})
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "ran 1 run(s)" in " ".join(resumed.stdout.split())
    assert (out / "variants" / "base" / "seed-0" / "summary.json").stat().st_mtime_ns == stamp
    trials = [(t.number, t.state.name, t.user_attrs["cft_run"], t.system_attrs.get("failed_trial")) for t in _trials(out / "study.db", "sweep")]
    assert sorted(trials) == [(0, "COMPLETE", "base/seed-0", None), (1, "FAIL", "train.lr=0.01/seed-0", None),
                              (2, "COMPLETE", "train.lr=0.01/seed-0", 1)], trials
    log = (out / "variants" / "train.lr=0.01" / "seed-0.log").read_text()
    attempts = [line for line in log.splitlines() if line.startswith("=== attempt")]
    assert len(attempts) == 2 and "--resume" in attempts[1], attempts
    assert {r["status"] for r in _rows(out)} == {"finished"}
