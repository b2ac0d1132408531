"""Faults: SIGKILL at a random point + --resume, SIGTERM, NaN/inf losses, atomic writes.

The SIGINT (Ctrl-C) case is tests/test_cli_train.py::test_interrupt_then_resume_matches_an_uninterrupted_run.
"""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import REPO, TINY_RECIPE, assert_user_error
from reliability_kit import cli

# 4 epochs of the tiny recipe: ~1 s of training on one core, so kills land in every phase
# (setup, mid-epoch, epoch end, checkpoint and bundle writes, finish) with the same budget.
KILL_RECIPE = TINY_RECIPE.replace("epochs: 3", "epochs: 4")


def _metrics(run: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k != "seconds"} for line in (run / "metrics.jsonl").read_text().splitlines()]


def _same_results(a: Path, b: Path, context: str = "") -> None:
    sa, sb = (json.loads((r / "summary.json").read_text()) for r in (a, b))
    for key in ("test", "valid", "best_epoch", "epochs_run", "params", "tasks"):
        assert sa[key] == sb[key], f"summary[{key}] differs {context}"
    assert _metrics(a) == _metrics(b), f"metrics.jsonl differs {context}"
    assert (a / "bundle.safetensors").read_bytes() == (b / "bundle.safetensors").read_bytes(), f"bundle bytes differ {context}"
    from safetensors.torch import load_file

    ha, hb = (load_file(str(r / "routing_history.safetensors")) for r in (a, b))
    assert ha.keys() == hb.keys() and all(torch.equal(ha[k], hb[k]) for k in ha), f"routing history differs {context}"


def check_complete_files(run: Path) -> list[str]:
    """Every file under its final name in a run folder parses completely (no truncated file)."""
    from safetensors.torch import load_file

    from cft.files.backbone import load_backbone
    from cft.files.bundle import read_bundle_info

    seen = []
    readers = {
        "recipe.yaml": lambda p: yaml.safe_load(p.read_text()),
        "metrics.jsonl": lambda p: [json.loads(line) for line in p.read_text().splitlines()],
        "summary.json": lambda p: json.loads(p.read_text()),
        "checkpoint.pt": lambda p: torch.load(p, map_location="cpu", weights_only=True),
        "bundle.safetensors": lambda p: (read_bundle_info(p), load_file(str(p))),
        "backbone.safetensors": load_backbone,
        "routing_history.safetensors": lambda p: load_file(str(p)),
        "skipped_smiles.csv": lambda p: p.read_text().splitlines()[0] == "row,smiles" or pytest.fail("bad skipped_smiles.csv"),
    }
    for name, read in readers.items():
        if (run / name).exists():
            read(run / name)
            seen.append(name)
    return seen


@pytest.fixture(scope="module")
def kill_recipe(tmp_path_factory) -> tuple[Path, Path, float]:
    """The recipe, its uninterrupted run (in this process), and how long that run spent writing its folder."""
    folder = tmp_path_factory.mktemp("kill")
    recipe = folder / "kill.yaml"
    recipe.write_text(KILL_RECIPE)
    straight = folder / "straight"
    cli("train", recipe, "-o", folder / "warm-up")  # first call pays the imports and the featurisation cache
    result = cli("train", recipe, "-o", straight)
    assert result.returncode == 0, result.stderr
    # the window in which a run writes: from its recipe.yaml (inputs checked) to its summary.json
    window = ((straight / "summary.json").stat().st_mtime_ns - (straight / "recipe.yaml").stat().st_mtime_ns) / 1e9
    return recipe, straight, window


def _wait_for_new(path: Path, old_stat, proc: subprocess.Popen, timeout: float = 240) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            return False
        try:
            st = path.stat()
            if old_stat is None or (st.st_ino, st.st_mtime_ns) != (old_stat.st_ino, old_stat.st_mtime_ns):
                return True
        except FileNotFoundError:
            pass
        time.sleep(0.005)
    raise AssertionError(f"{path} did not appear within {timeout}s")


def test_sigkill_at_random_points_then_resume_is_identical(kill_recipe, tmp_path):
    """Kill -9 a training subprocess at random moments, twice, then --resume: same metrics, same
    bundle bytes, same routing history as the uninterrupted run; after each kill, every file under
    its final name is complete. CFT_KILL_SEED=N replays a failure."""
    recipe, straight, seconds = kill_recipe
    seed = int(os.environ.get("CFT_KILL_SEED", random.randrange(1_000_000)))
    rng = random.Random(seed)
    run = tmp_path / "killed"
    log = []
    for attempt in range(2):
        marker = run / "recipe.yaml"  # rewritten by every start once its inputs are checked
        old = marker.stat() if marker.exists() else None
        args = [sys.executable, "-m", "cft", "train", str(recipe), "-o", str(run)] + (["--resume"] if attempt else [])
        proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            started = _wait_for_new(marker, old, proc)
            delay = rng.uniform(0, 1.1 * seconds)
            if started:
                time.sleep(delay)
            alive = proc.poll() is None
            proc.kill()
            _, err = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
        log.append(f"attempt {attempt}: killed {delay:.3f}s after start of training" if alive else f"attempt {attempt}: finished before the kill ({proc.returncode})")
        context = f"(CFT_KILL_SEED={seed}; {'; '.join(log)})"
        assert "Traceback" not in err, f"{err} {context}"
        files = check_complete_files(run)
        log[-1] += f", files: {','.join(files)}"
    resumed = cli("train", recipe, "-o", run, "--resume")
    context = f"(CFT_KILL_SEED={seed}; {'; '.join(log)})"
    assert resumed.returncode == 0, f"{resumed.stderr} {context}"
    _same_results(straight, run, context)
    assert not list(run.glob(".*.tmp")), f"temporary files left behind {context}"
    print(context)  # pytest -rP shows where the kills landed


def test_sigterm_saves_a_checkpoint_and_says_how_to_resume(kill_recipe, tmp_path, monkeypatch):
    """What a scheduler sends before it kills a job: treated like Ctrl-C (checkpoint, message, exit 143)."""
    recipe, straight, _ = kill_recipe
    real_step = torch.optim.AdamW.step
    calls = {"n": 0}

    def step_then_sigterm(self, *a, **k):
        out = real_step(self, *a, **k)
        calls["n"] += 1
        if calls["n"] == 17:  # mid-epoch 2 of 4
            os.kill(os.getpid(), signal.SIGTERM)
        return out

    monkeypatch.setattr(torch.optim.AdamW, "step", step_then_sigterm)
    handler_before = signal.getsignal(signal.SIGTERM)
    run = tmp_path / "run"
    result = cli("train", recipe, "-o", run)
    assert result.returncode == 143, result.stderr
    assert "Interrupted (SIGTERM) at epoch 2" in result.stderr and "Resume with: cft train" in result.stderr
    assert not (run / "bundle.safetensors").exists()
    state = torch.load(run / "checkpoint.pt", weights_only=True)["state"]
    assert (state["epoch"], state["batch_in_epoch"]) == (1, 7)
    monkeypatch.setattr(torch.optim.AdamW, "step", real_step)
    assert signal.getsignal(signal.SIGTERM) == handler_before, "the training loop restores the signal handlers it replaced"
    resumed = cli("train", recipe, "-o", run, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    _same_results(straight, run)


# ------------------------------------------------------------------ NaN / inf


def test_absurd_learning_rate_stops_with_epoch_and_hint(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(TINY_RECIPE)
    run = tmp_path / "run"
    result = cli("train", recipe, "-o", run, "--set", "train.lr=1e30")
    assert_user_error(result, "became nan at epoch 1", "training stopped", "No checkpoint was written", "Lower train.lr (now 1e+30)", "train.reg_strength", "--overwrite")
    assert not (run / "bundle.safetensors").exists() and not (run / "summary.json").exists()


def test_nan_in_a_later_epoch_keeps_the_last_good_checkpoint(kill_recipe, tmp_path, monkeypatch):
    recipe, straight, _ = kill_recipe
    from cft.nn.model import CftModel

    real_loss = CftModel.task_loss
    calls = {"n": 0}

    def loss_turns_inf(self, logits, y):
        calls["n"] += 1
        loss = real_loss(self, logits, y)
        return loss * float("inf") if calls["n"] == 25 else loss  # epoch 3, batch 5 (10 batches per epoch)

    monkeypatch.setattr(CftModel, "task_loss", loss_turns_inf)
    run = tmp_path / "run"
    result = cli("train", recipe, "-o", run)
    assert_user_error(result, "The training loss became inf at epoch 3, batch 5", "last good checkpoint (end of epoch 2) is kept", "Lower train.lr")
    payload = torch.load(run / "checkpoint.pt", weights_only=True)
    assert (payload["state"]["epoch"], payload["state"]["batch_in_epoch"]) == (2, 0)
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2
    assert not (run / "bundle.safetensors").exists() and not (run / "summary.json").exists()
    # the kept checkpoint is a real one: resuming it (without the fault) ends where an uninterrupted run ends
    monkeypatch.setattr(CftModel, "task_loss", real_loss)
    assert cli("train", recipe, "-o", run, "--resume").returncode == 0
    _same_results(straight, run)


def test_weights_that_overflow_at_the_end_of_an_epoch_are_caught(kill_recipe, tmp_path, monkeypatch):
    recipe, _, _ = kill_recipe
    import cft.training.trainer as train_module

    real_epoch = train_module.Trainer._train_epoch

    def epoch_then_overflow(self, interrupt):
        real_epoch(self, interrupt)
        if self.state.epoch == 1:
            with torch.no_grad():
                self.model.head.weight.fill_(float("inf"))

    monkeypatch.setattr(train_module.Trainer, "_train_epoch", epoch_then_overflow)
    result = cli("train", recipe, "-o", tmp_path / "run")
    assert_user_error(result, "Weights (head.weight) became NaN or inf at epoch 2", "last good checkpoint (end of epoch 1)")


# ------------------------------------------------------------------ atomic writes


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    from cft.errors import CftError
    from cft.files.atomic import atomic_write_text, atomic_write_with

    target = tmp_path / "summary.json"
    atomic_write_text(target, '{"old": true}\n')

    def crash_halfway(tmp: Path) -> None:
        tmp.write_text('{"new": tr')
        raise RuntimeError("simulated crash in the middle of a write")

    with pytest.raises(RuntimeError):
        atomic_write_with(target, crash_halfway)
    assert target.read_text() == '{"old": true}\n'

    def disk_full(tmp: Path) -> None:
        tmp.write_text("partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(CftError, match="Cannot write .*summary.json: No space left on device"):
        atomic_write_with(target, disk_full)
    assert target.read_text() == '{"old": true}\n'
    with pytest.raises(RuntimeError):
        atomic_write_with(tmp_path / "new.json", crash_halfway)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"], "no temporary or half-written file is left"


def _write_calls(tree):
    """(node, description) of every call that writes a file, as far as the AST can tell."""
    import ast

    methods = {"write_text", "write_bytes", "save_file", "to_csv", "savefig", "copyfile", "copy2", "copytree", "move",
               "to_parquet", "to_json", "touch", "symlink_to", "hardlink_to", "mkstemp"}
    module_functions = {("torch", "save"), ("np", "save"), ("numpy", "save"), ("os", "replace"), ("os", "rename"),
                        ("shutil", "copy"), ("json", "dump"), ("yaml", "dump"), ("yaml", "safe_dump"), ("pickle", "dump")}
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Name) and func.id == "open":
            mode = node.args[1] if len(node.args) > 1 else next((k.value for k in node.keywords if k.arg == "mode"), None)
            if isinstance(mode, ast.Constant) and any(c in str(mode.value) for c in "wax+"):
                yield node
        elif isinstance(func, ast.Attribute):
            owner = func.value.id if isinstance(func.value, ast.Name) else None
            if (owner, func.attr) in module_functions:
                if func.attr in ("dump", "safe_dump") and len(node.args) < 2 and not any(k.arg == "stream" for k in node.keywords):
                    continue  # dump to a string
                yield node
            elif func.attr in methods:
                yield node


def test_every_write_in_the_package_goes_through_a_temporary_name():
    """Static check: each call that writes a file (open for writing, write_text/bytes, torch.save,
    np.save, safetensors save_file, to_csv, savefig, copies, moves, renames) either lives in
    cft/files/atomic.py or writes the temporary path `tmp` that its atomic_path / atomic_write_with
    hands out (it is a parameter of the enclosing function or lambda). A deliberate exception
    carries a `# atomic:` comment on its line saying why it is safe."""
    import ast

    offenders = []
    for path in sorted((REPO / "cft").rglob("*.py")):
        if path.relative_to(REPO).as_posix() == "cft/files/atomic.py":
            continue
        source = path.read_text()
        lines = source.splitlines()
        tree = ast.parse(source)
        parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
        for node in _write_calls(tree):
            if "# atomic:" in lines[node.lineno - 1]:
                continue
            scope = node
            while scope in parents and not isinstance(scope, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                scope = parents[scope]
            params = {a.arg for a in scope.args.args} if isinstance(scope, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)) else set()
            if "tmp" not in params:
                offenders.append(f"{path.relative_to(REPO)}:{node.lineno}: {lines[node.lineno - 1].strip()}")
    assert not offenders, "writes that bypass cft.files.atomic's temp-file + rename:\n" + "\n".join(offenders)


def test_the_write_scan_finds_writes():
    import ast

    sample = "def f(path):\n    open(path, 'w').write('x')\n    torch.save(obj, path)\n    Path(path).write_text('x')\n    frame.to_csv(path)\n"
    assert len(list(_write_calls(ast.parse(sample)))) == 4


def test_ctrl_c_before_training_leaves_nothing(tmp_path, monkeypatch):
    import cft.training.trainer as train_module

    def interrupted(*_a, **_k):
        raise KeyboardInterrupt

    recipe = tmp_path / "r.yaml"
    recipe.write_text(TINY_RECIPE)
    monkeypatch.setattr(train_module, "obtain_backbone", interrupted)  # after the folder was created
    result = cli("train", recipe, "-o", tmp_path / "run")
    assert result.returncode == 130, result.stderr
    assert "Interrupted before training started; nothing was kept" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()


def test_ctrl_c_while_writing_the_results_resumes_to_the_same_bundle(kill_recipe, tmp_path, monkeypatch):
    recipe, straight, _ = kill_recipe
    import cft.training.trainer as train_module

    real_save = train_module.save_bundle

    def interrupted(*_a, **_k):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "save_bundle", interrupted)
    run = tmp_path / "run"
    result = cli("train", recipe, "-o", run)
    assert result.returncode == 130 and "Interrupted while writing the results" in result.stderr and "--resume" in result.stderr
    assert not (run / "bundle.safetensors").exists()
    monkeypatch.setattr(train_module, "save_bundle", real_save)
    assert cli("train", recipe, "-o", run, "--resume").returncode == 0
    _same_results(straight, run)
