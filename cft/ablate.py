"""`cft ablate`: sweep recipe knobs, each variant a real `cft train` run, and summarise.

A sweep is planned and validated completely before anything runs: every grid key is checked
against the recipe schema, every value is coerced by the same pydantic models as a recipe, and
every variant's recipe is validated (cross-field rules included). Then the runs (variant x seed)
are started as `python -m cft train` subprocesses, J at a time, and the results are collected
from their `summary.json` files.

Layout of the output folder (see docs/ablate.md):

    ablation.json                 what was swept (recipe, grids, mode, seeds, variants)
    ablation.csv                  one row per variant x seed
    ablation.md                   mean +- std per variant, best valid metric first
    plots/<knob>.png              metric against each knob, error bars over seeds
    variants/<name>/variant.json  the variant's knob values (never parsed from the name)
    variants/<name>/recipe.yaml   the variant's full recipe (`cft train` runs this file)
    variants/<name>/seed-<S>/     the run folder of seed S (what `cft train -o` writes)
    variants/<name>/seed-<S>.log  that run's output
    variants/<name>/seed-<S>.json that run's last attempt: status, error, command, threads, times

Resuming: a run whose folder holds a summary.json is finished and skipped; a run that was
interrupted or failed is started again with `cft train --resume`, which continues from its
checkpoint. Variant folder names depend only on the knob values that differ from the recipe,
so re-running the same (or an extended) sweep finds the runs it already has.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import hashlib
import io
import itertools
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Optional

from pydantic import ValidationError

from cft.errors import CftError, TrainingInterrupted
from cft.fsutil import atomic_write_json, atomic_write_text, atomic_write_with
from cft.recipe import Recipe, apply_override, check_key_path, parse_override, read_yaml_file, recipe_to_yaml, validate_raw

# --------------------------------------------------------------------------- presets

PRESETS: dict[str, dict[str, list[Any]]] = {
    # the paper's sensitivity studies, one knob at a time around the recipe's values
    "paper": {
        "routing.temperature": [0.1, 0.3, 1.0, 3.0, 10.0],
        "routing.threshold": [0.0, 0.05, 0.1, 0.2, 0.3],
        "train.reg_strength": [0.0, 0.001, 0.01, 0.1, 1.0],
        "adapters.rank": [1, 4, 8, 16, 32],
        "adapters.num_adapters": [1, 2, 4, 8, 16],
        "prior.source": ["labels", "identity", "learned"],
    },
}

# keys a sweep cannot vary: the seed is what --seeds varies; the others do not change a run
_NOT_KNOBS = {
    "seed": "the seed is varied by --seeds N (seeds recipe.seed, recipe.seed+1, ...)",
    "output_dir": "every run gets its own folder under --output-dir",
    "description": "it does not change a run",
}

# as cft.metrics.HIGHER_IS_BETTER says (importing cft.metrics imports ogb and torch: seconds)
_LOWER_IS_BETTER = {"rmse"}

BASE_NAME = "base"
_MAX_NAME = 96
_TERMINAL_WAIT_S = 600.0  # how long interrupted runs get to write their checkpoint

# --------------------------------------------------------------------------- grids


@dataclass
class Grid:
    key: str
    parts: tuple[str, ...]
    texts: list[str]  # the values as written
    values: list[Any]  # parsed like --set values (YAML)
    coerced: list[Any] = field(default_factory=list)  # as the recipe holds them (set by build_plan)


def split_values(text: str, origin: str) -> list[str]:
    """Split `V1,V2,...` on commas that are outside brackets, braces, parentheses and quotes,
    so `adapters.layers=[0,1],all` gives `[0,1]` and `all`."""
    pieces, depth, quote, current = [], 0, None, []
    for ch in text:
        if quote:
            current.append(ch)
            if ch == quote:
                quote = None
            continue
        if ch in "'\"":
            quote = ch
        elif ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
            if depth < 0:
                raise CftError(f"{origin}: unbalanced `{ch}` in {text!r}.", hint="Brackets group a list value, e.g. adapters.layers=[0,1],all.")
        elif ch == "," and depth == 0:
            pieces.append("".join(current).strip())
            current = []
            continue
        current.append(ch)
    if quote or depth:
        raise CftError(f"{origin}: unclosed {'quote' if quote else 'bracket'} in {text!r}.", hint="Brackets group a list value, e.g. adapters.layers=[0,1],all.")
    pieces.append("".join(current).strip())
    return pieces


def parse_grid(text: str) -> Grid:
    """`KEY=V1,V2,...` -> Grid (the key checked against the recipe schema, values YAML-parsed)."""
    if "=" not in text:
        raise CftError(f"--grid {text!r}: expected KEY=V1,V2,..., e.g. --grid adapters.rank=4,8,16.")
    key, values_text = (s.strip() for s in text.split("=", 1))
    origin = f"--grid {key}"
    parts = check_key_path(key, "--grid")
    if key in _NOT_KNOBS:
        raise CftError(f"{origin}: `{key}` cannot be swept: {_NOT_KNOBS[key]}.")
    if not values_text:
        raise CftError(f"{origin}: the list of values is empty.", hint=f"Give at least one value, e.g. --grid {key}=V1,V2.")
    texts = split_values(values_text, origin)
    if any(not t for t in texts):
        raise CftError(f"{origin}: empty value in {values_text!r} (two commas in a row, or a trailing comma).")
    values = [parse_override(f"{key}={t}", "--grid")[1] for t in texts]
    return Grid(key=key, parts=parts, texts=texts, values=values)


def preset_grids(name: str) -> list[Grid]:
    if name not in PRESETS:
        raise CftError(f"--preset {name!r} is not a preset; presets: {', '.join(PRESETS)}.")
    return [Grid(key=k, parts=tuple(k.split(".")), texts=[format_value(v) for v in vs], values=list(vs)) for k, vs in PRESETS[name].items()]


# --------------------------------------------------------------------------- values and names


def format_value(value: Any) -> str:
    """A knob value as people write it: 0.1, 8, true, labels, [0, 1]."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, separators=(", ", ": "))
    return str(value)


def _slug_value(value: Any) -> str:
    if isinstance(value, (list, tuple)) and all(isinstance(v, (int, float, str)) and not isinstance(v, bool) for v in value):
        return "-".join(format_value(v) for v in value)
    return format_value(value)


def variant_name(changes: dict[str, Any]) -> str:
    """A stable, readable folder name: sorted key=value pairs of the knobs that differ from the
    recipe (`base` when none does), with a short hash when it is long or had to be cleaned."""
    if not changes:
        return BASE_NAME
    raw = "__".join(f"{k}={_slug_value(changes[k])}" for k in sorted(changes))
    clean = re.sub(r"[^A-Za-z0-9._=+-]", "_", raw)
    digest = hashlib.sha1(json.dumps(changes, sort_keys=True, default=str).encode()).hexdigest()[:8]
    if clean != raw or len(clean) > _MAX_NAME:
        clean = f"{clean[:_MAX_NAME - 9]}-{digest}"
    return clean


def _get(tree: Any, parts: tuple[str, ...]) -> Any:
    for part in parts:
        if not isinstance(tree, dict) or part not in tree:
            return None
        tree = tree[part]
    return tree


def _numeric(values: list[Any]) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


# --------------------------------------------------------------------------- the plan


@dataclass
class Variant:
    name: str
    knobs: dict[str, Any]  # every swept key -> its (coerced) value in this variant
    changes: dict[str, Any]  # the knobs whose value differs from the recipe's
    recipe: Recipe  # validated; output_dir None

    @property
    def label(self) -> str:
        return ", ".join(f"{k}={format_value(v)}" for k, v in self.changes.items()) or "(recipe)"


@dataclass
class Plan:
    recipe_path: Path
    sets: list[str]
    grids: list[Grid]
    mode: str  # "grid" (cartesian product) or "one-at-a-time"
    preset: Optional[str]
    seeds: list[int]
    base: Recipe
    base_knobs: dict[str, Any]
    variants: list[Variant]

    @property
    def keys(self) -> list[str]:
        return [g.key for g in self.grids]

    def runs(self) -> list[tuple[Variant, int]]:
        return [(v, s) for v in self.variants for s in self.seeds]


def build_plan(
    recipe_path: Path,
    grid_texts: list[str],
    sets: list[str],
    *,
    one_at_a_time: bool = False,
    preset: Optional[str] = None,
    seeds: int = 1,
) -> Plan:
    """Parse and validate the whole sweep; raise CftError (naming the key) before anything runs."""
    if seeds < 1:
        raise CftError(f"--seeds must be at least 1, got {seeds}.")
    raw, lines = read_yaml_file(recipe_path)
    set_keys: dict[str, str] = {}
    for text in sets:
        parts, value = parse_override(text)
        apply_override(raw, parts, value)
        lines.pop(parts, None)
        set_keys[".".join(parts)] = text
    # field types and ranges of the recipe itself; cross-field rules are checked per variant (a
    # sweep may supply what the recipe lacks, e.g. --set prior.source=file --grid prior.path=a.npy,b.npy)
    try:
        base = Recipe.model_validate(copy.deepcopy(raw))
    except ValidationError:
        validate_raw(copy.deepcopy(raw), str(recipe_path), lines)
        raise

    grids: dict[str, Grid] = {}
    if preset:
        grids.update({g.key: g for g in preset_grids(preset)})
        one_at_a_time = True
    given = [parse_grid(t) for t in grid_texts]
    seen: set[str] = set()
    for grid in given:
        if grid.key in seen:
            raise CftError(f"--grid {grid.key} is given twice; put all its values in one --grid {grid.key}=V1,V2,....")
        seen.add(grid.key)
        grids[grid.key] = grid  # a --grid replaces the preset's values for that key
    if not grids:
        raise CftError("Nothing to sweep: give at least one --grid KEY=V1,V2,... or --preset paper.")
    for key in grids:
        if key in set_keys:
            raise CftError(f"--grid {key} and --set {set_keys[key]} both set {key}; drop one of them.")
    grid_list = list(grids.values())

    # 1. every value alone on the recipe: types and ranges (pydantic), reported all at once
    problems: list[str] = []
    coerced: dict[str, list[Any]] = {}
    for grid in grid_list:
        coerced[grid.key] = []
        for text, value in zip(grid.texts, grid.values):
            trial = copy.deepcopy(raw)
            apply_override(trial, grid.parts, value)
            try:
                recipe = Recipe.model_validate(trial)
            except ValidationError:
                try:
                    validate_raw(trial, f"--grid {grid.key}={text}")
                except CftError as exc:
                    # validate_raw lists `  path (line N): message`; the path is the key itself
                    for line in exc.message.splitlines()[1:]:
                        line = line.strip()
                        if line.startswith(grid.key + ":"):
                            line = line[len(grid.key) + 1:].strip()
                        problems.append(f"  --grid {grid.key}={text}: {line}")
                    continue
                raise
            coerced[grid.key].append(_get(recipe.model_dump(mode="json"), grid.parts))
        dup = _first_duplicate(coerced[grid.key])
        if dup is not None and len(coerced[grid.key]) == len(grid.texts):
            problems.append(f"  --grid {grid.key}: the value {format_value(dup)} is given twice.")
    if problems:
        raise CftError("Bad --grid values (nothing was run):\n" + "\n".join(problems))
    for grid in grid_list:
        grid.coerced = coerced[grid.key]

    base_dump = base.model_dump(mode="json")
    base_knobs = {g.key: _get(base_dump, g.parts) for g in grid_list}

    # 2. the variants, each validated as a whole recipe (cross-field rules too)
    assignments: list[dict[str, Any]] = []
    if one_at_a_time:
        assignments.append(dict(base_knobs))
        for grid in grid_list:
            for value in coerced[grid.key]:
                if value != base_knobs[grid.key]:
                    assignments.append({**base_knobs, grid.key: value})
    else:
        for combo in itertools.product(*(coerced[g.key] for g in grid_list)):
            assignments.append(dict(zip(grids, combo)))

    variants: list[Variant] = []
    names: dict[str, Variant] = {}
    bad: list[str] = []
    for knobs in assignments:
        trial = copy.deepcopy(raw)
        for grid in grid_list:
            if knobs[grid.key] != base_knobs[grid.key]:
                apply_override(trial, grid.parts, knobs[grid.key])
        changes = {k: v for k, v in knobs.items() if v != base_knobs[k]}
        describe = ", ".join(f"{k}={format_value(v)}" for k, v in changes.items()) or "the recipe's own values"
        try:
            recipe = validate_raw(trial, f"variant {describe}")
        except CftError as exc:
            bad.append(exc.message)
            continue
        recipe.output_dir = None
        name = variant_name(changes)
        if name in names:
            continue
        variant = Variant(name=name, knobs=knobs, changes=changes, recipe=recipe)
        names[name] = variant
        variants.append(variant)
    if bad and len(bad) == len(assignments):
        validate_raw(copy.deepcopy(raw), str(recipe_path), lines)  # the recipe itself is the problem: say so once
    if bad:
        more = f"\n({len(bad) - 3} more invalid variants)" if len(bad) > 3 else ""
        raise CftError(
            f"{len(bad)} of {len(assignments)} variants are not valid recipes (nothing was run):\n" + "\n".join(bad[:3]) + more,
            hint="Change the --grid values (or the recipe) so that every combination is valid.",
        )
    return Plan(
        recipe_path=Path(recipe_path), sets=list(sets), grids=grid_list, mode="one-at-a-time" if one_at_a_time else "grid",
        preset=preset, seeds=[base.seed + i for i in range(seeds)], base=base, base_knobs=base_knobs, variants=variants,
    )


def _first_duplicate(values: list[Any]) -> Any:
    seen: list[Any] = []
    for v in values:
        if v in seen:
            return v
        seen.append(v)
    return None


# --------------------------------------------------------------------------- run records


@dataclass
class RunResult:
    variant: Variant
    seed: int
    status: str  # finished | failed | pending | running | interrupted
    summary: Optional[dict] = None
    error: str = ""
    run_dir: Optional[Path] = None


class SweepFolder:
    def __init__(self, path: Path):
        self.path = Path(path)

    def variant_dir(self, variant: Variant) -> Path:
        return self.path / "variants" / variant.name

    def run_dir(self, variant: Variant, seed: int) -> Path:
        return self.variant_dir(variant) / f"seed-{seed}"

    def log(self, variant: Variant, seed: int) -> Path:
        return self.variant_dir(variant) / f"seed-{seed}.log"

    def record(self, variant: Variant, seed: int) -> Path:
        return self.variant_dir(variant) / f"seed-{seed}.json"

    def is_sweep(self) -> bool:
        return (self.path / "ablation.json").exists()

    def check(self, plan: Plan) -> None:
        """Refuse a folder that is not a sweep, or whose runs were made from other recipes."""
        from cft.runfolder import RunFolder

        path = self.path
        if path.exists() and not path.is_dir():
            raise CftError(f"Output path {path} is a file, not a folder.", hint="Choose another --output-dir.")
        if path.exists() and any(p.name != ".lock" for p in path.iterdir()) and not self.is_sweep():
            raise CftError(
                f"Output folder {path} is not empty and does not hold a cft ablation; cft will not write into it.",
                hint="Choose another --output-dir (or an empty folder).",
            )
        conflicts = []
        for variant, seed in plan.runs():
            run = RunFolder(self.run_dir(variant, seed))
            if not run.path.exists():
                continue
            if not run.is_run():
                if any(run.path.iterdir()):
                    conflicts.append(f"{run.path} is not empty and holds no cft run")
                continue
            diffs = run.recipe_differences(seeded(variant.recipe, seed))
            if diffs:
                conflicts.append(f"{run.path} holds a run of a different recipe ({'; '.join(diffs[:3])})")
        if conflicts:
            more = f" (and {len(conflicts) - 3} more)" if len(conflicts) > 3 else ""
            raise CftError(
                f"Output folder {path} holds runs that this sweep would have to replace: {'; '.join(conflicts[:3])}{more}.",
                hint="Use another --output-dir, or delete those run folders to rerun them.",
            )

    def status(self, variant: Variant, seed: int) -> RunResult:
        run_dir = self.run_dir(variant, seed)
        summary_path = run_dir / "summary.json"
        if summary_path.exists():
            try:
                return RunResult(variant, seed, "finished", json.loads(summary_path.read_text(encoding="utf-8")), run_dir=run_dir)
            except (OSError, ValueError):
                pass
        record = self.record(variant, seed)
        if record.exists():
            try:
                data = json.loads(record.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                data = {}
            if data.get("status") == "failed":
                return RunResult(variant, seed, "failed", error=str(data.get("error", "")), run_dir=run_dir)
        return RunResult(variant, seed, "pending", run_dir=run_dir)

    def write_definition(self, plan: Plan, command: str) -> None:
        for variant in plan.variants:
            vdir = self.variant_dir(variant)
            atomic_write_json(vdir / "variant.json", {"name": variant.name, "knobs": variant.knobs, "changes": variant.changes})
            atomic_write_text(vdir / "recipe.yaml", f"# variant {variant.label} of {plan.recipe_path}\n" + recipe_to_yaml(variant.recipe))
        atomic_write_json(self.path / "ablation.json", {
            "format": "cft-ablation-1",
            "command": command,
            "recipe": str(plan.recipe_path),
            "sets": plan.sets,
            "mode": plan.mode,
            "preset": plan.preset,
            "grids": {g.key: g.coerced for g in plan.grids},
            "recipe_values": plan.base_knobs,
            "seeds": plan.seeds,
            "variants": [{"name": v.name, "knobs": v.knobs, "changes": v.changes} for v in plan.variants],
        })


def seeded(recipe: Recipe, seed: int) -> Recipe:
    return recipe.model_copy(update={"seed": seed})


@contextlib.contextmanager
def sweep_lock(path: Path):
    """One sweep at a time per output folder (two would train into the same run folders)."""
    import fcntl

    path.mkdir(parents=True, exist_ok=True)
    handle = open(path / ".lock", "a+")  # atomic: an empty lock file, only flock()ed, never read
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise CftError(f"Another `cft ablate` is running in {path}.", hint="Wait for it to end, or use another --output-dir.") from None
        yield
    finally:
        handle.close()


# --------------------------------------------------------------------------- resources


def available_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def visible_gpus(device: str, count: Optional[int] = None, env: Optional[str] = None) -> list[str]:
    """CUDA devices to hand out one per job (as CUDA_VISIBLE_DEVICES values), or [] on CPU, for a
    pinned device (cuda:N) or with fewer than two devices. `count` and `env` default to what
    torch and $CUDA_VISIBLE_DEVICES say; the ids are the parent's own (e.g. 2,3 of a node)."""
    if device not in ("auto", "cuda"):
        return []
    if count is None:
        try:
            import torch

            count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        except Exception:
            return []
    if count < 2:
        return []
    env = os.environ.get("CUDA_VISIBLE_DEVICES") if env is None else env
    ids = [s.strip() for s in env.split(",") if s.strip()] if env else [str(i) for i in range(count)]
    return ids[:count]


def pick_gpu(gpus: list[str], busy: list[Optional[str]]) -> Optional[str]:
    """The device with the fewest running jobs (the first such one); None without devices."""
    if not gpus:
        return None
    return min(gpus, key=lambda g: (busy.count(g), gpus.index(g)))


# --------------------------------------------------------------------------- running


@dataclass
class _Job:
    variant: Variant
    seed: int
    proc: subprocess.Popen
    log: Any
    record: dict
    started: float
    gpu: Optional[str]
    forwarded: Optional[float] = None  # when SIGINT was forwarded to it


@dataclass
class Progress:
    """What the live display shows: per-run states, updated by the scheduler."""

    plan: Plan
    results: dict[tuple[str, int], RunResult] = field(default_factory=dict)
    started_at: dict[tuple[str, int], float] = field(default_factory=dict)

    def set(self, result: RunResult) -> None:
        self.results[(result.variant.name, result.seed)] = result

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.results.values():
            out[r.status] = out.get(r.status, 0) + 1
        return out


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _error_from_log(path: Path, returncode: int) -> str:
    """The user-facing error paragraph of a failed run (`error: ...`), else its last line."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        text = ""
    text = text.split("\n=== attempt ")[-1]
    where = text.rfind("error: ")
    if where >= 0 and (where == 0 or text[where - 1] == "\n"):
        message = " ".join(text[where + len("error: "):].split())
    else:
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        message = lines[-1] if lines else ""
    message = message[:600]
    exit_what = f"exit code {returncode}" if returncode >= 0 else f"killed by signal {-returncode}"
    return f"{message} ({exit_what})" if message else f"cft train ended with {exit_what}"


class Sweep:
    def __init__(self, plan: Plan, folder: SweepFolder, *, jobs: int, data_root: Optional[str], device: Optional[str],
                 on_change: Callable[[Progress], None], note: Callable[[str], None]):
        self.plan, self.folder, self.jobs = plan, folder, max(1, jobs)
        self.data_root, self.device = data_root, device
        self.on_change, self.note = on_change, note
        self.progress = Progress(plan)
        self.stop_signal: Optional[int] = None
        self.hard_stop = False
        self.threads = max(1, available_cores() // self.jobs)
        self._gpus: Optional[list[str]] = None

    @property
    def gpus(self) -> list[str]:
        if self._gpus is None:  # imports torch: only once there is something to run
            self._gpus = visible_gpus(self.device or self.plan.base.train.device)
        return self._gpus

    # ------------------------------------------------------------ signals

    def _handler(self, signum, frame):
        if self.stop_signal is not None:
            self.hard_stop = True
        self.stop_signal = signum

    @contextlib.contextmanager
    def _signals(self):
        previous = {}
        wanted = [signal.SIGINT, signal.SIGTERM] + ([signal.SIGHUP] if hasattr(signal, "SIGHUP") else [])
        try:
            for sig in wanted:
                previous[sig] = signal.signal(sig, self._handler)
        except ValueError:  # not the main thread: no handlers
            pass
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    # ------------------------------------------------------------ one run

    def _command(self, variant: Variant, seed: int) -> list[str]:
        run_dir = self.folder.run_dir(variant, seed)
        cmd = [sys.executable, "-m", "cft", "train", str(self.folder.variant_dir(variant) / "recipe.yaml"), "--set", f"seed={seed}"]
        if variant.recipe.train.threads is None:
            cmd += ["--set", f"train.threads={self.threads}"]
        cmd += ["--output-dir", str(run_dir)]
        if (run_dir / "recipe.yaml").exists():
            cmd.append("--resume")
        if self.data_root:
            cmd += ["--data-root", self.data_root]
        if self.device:
            cmd += ["--device", self.device]
        return cmd

    def _start(self, variant: Variant, seed: int, running: list[_Job]) -> _Job:
        cmd = self._command(variant, seed)
        threads = variant.recipe.train.threads or self.threads
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1", "COLUMNS": "160"}
        gpu = pick_gpu(self.gpus, [j.gpu for j in running])
        if gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = gpu
        log_path = self.folder.log(variant, seed)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(log_path, "a", encoding="utf-8")  # atomic: an append-only log; a crash can only cut its last line
        log.write(f"\n=== attempt {_now()}: {' '.join(cmd)}\n")
        log.flush()
        record = {"status": "running", "variant": variant.name, "seed": seed, "knobs": variant.knobs, "command": cmd,
                  "threads": threads, "cuda_visible_devices": gpu, "started": _now(), "ended": None, "returncode": None, "error": None}
        atomic_write_json(self.folder.record(variant, seed), record)
        # its own session: a Ctrl-C in the terminal reaches only the sweep, which forwards exactly one
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        self.progress.started_at[(variant.name, seed)] = time.time()
        self.progress.set(RunResult(variant, seed, "running", run_dir=self.folder.run_dir(variant, seed)))
        return _Job(variant, seed, proc, log, record, time.time(), gpu)

    def _finish(self, job: _Job) -> RunResult:
        job.log.close()
        code = job.proc.returncode
        result = self.folder.status(job.variant, job.seed)
        record = {**job.record, "ended": _now(), "returncode": code, "seconds": round(time.time() - job.started, 3)}
        if code == 0 and result.status == "finished":
            record["status"] = "finished"
        elif self.stop_signal is not None:
            record["status"] = "interrupted"
            result = RunResult(job.variant, job.seed, "interrupted", run_dir=result.run_dir)
        else:
            error = _error_from_log(self.folder.log(job.variant, job.seed), code)
            record.update(status="failed", error=error)
            result = RunResult(job.variant, job.seed, "failed", error=error, run_dir=result.run_dir)
        atomic_write_json(self.folder.record(job.variant, job.seed), record)
        self.progress.set(result)
        return result

    # ------------------------------------------------------------ the loop

    def run(self, on_result: Callable[[RunResult], None]) -> None:
        todo = []
        for variant, seed in self.plan.runs():
            result = self.folder.status(variant, seed)
            self.progress.set(result if result.status == "finished" else RunResult(variant, seed, "pending", run_dir=result.run_dir))
            if result.status != "finished":
                todo.append((variant, seed))
        # the first run goes alone until it has its data and backbone (both cached on disk), so
        # J jobs do not featurise the same dataset or pretrain the same backbone J times
        warm = len(todo) < len(self.plan.runs())
        running: list[_Job] = []
        self.on_change(self.progress)
        with self._signals(), self._no_orphans(running):
            while (todo and self.stop_signal is None) or running:
                if self.stop_signal is not None:
                    self._forward(running)
                capacity = self.jobs if warm else 1
                while todo and self.stop_signal is None and len(running) < capacity:
                    variant, seed = todo.pop(0)
                    job = self._start(variant, seed, running)
                    running.append(job)
                    self.note(f"started {variant.label}, seed {seed}" + (f" on GPU {job.gpu}" if job.gpu else ""))
                    self.on_change(self.progress)
                for job in list(running):
                    if job.proc.poll() is None:
                        continue
                    running.remove(job)
                    warm = True
                    result = self._finish(job)
                    on_result(result)
                    self.on_change(self.progress)
                if not warm and any(self._has_started_training(j) for j in running):
                    warm = True
                time.sleep(0.2)
        self.on_change(self.progress)

    @contextlib.contextmanager
    def _no_orphans(self, running: list[_Job]):
        """If the sweep itself fails, its runs (in their own sessions) must not train on unattended."""
        try:
            yield
        except BaseException:
            for job in running:
                with contextlib.suppress(ProcessLookupError):
                    job.proc.send_signal(signal.SIGINT)
            deadline = time.time() + 30
            for job in running:
                try:
                    job.proc.wait(timeout=max(0.1, deadline - time.time()))
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(job.proc.pid, signal.SIGKILL)
            raise

    def _has_started_training(self, job: _Job) -> bool:
        run_dir = self.folder.run_dir(job.variant, job.seed)
        return any((run_dir / name).exists() for name in ("backbone.safetensors", "backbone_start.safetensors", "metrics.jsonl"))

    def _forward(self, running: list[_Job]) -> None:
        """Ask every run to checkpoint and stop (SIGINT, as a Ctrl-C would); kill them on a second
        signal or when they take too long."""
        for job in running:
            if job.proc.poll() is not None:
                continue
            if self.hard_stop or (job.forwarded is not None and time.time() - job.forwarded > _TERMINAL_WAIT_S):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(job.proc.pid, signal.SIGKILL)
            elif job.forwarded is None:
                with contextlib.suppress(ProcessLookupError):
                    job.proc.send_signal(signal.SIGINT)
                job.forwarded = time.time()


# --------------------------------------------------------------------------- results


def collect(plan: Plan, folder: SweepFolder) -> list[RunResult]:
    return [folder.status(v, s) for v, s in plan.runs()]


def _mean_std(values: list[float]) -> tuple[float, float]:
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not values:
        return math.nan, math.nan
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, math.nan
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


@dataclass
class VariantStats:
    variant: Variant
    runs: list[RunResult]
    valid: tuple[float, float]
    test: tuple[float, float]
    seconds: float
    trainable: Optional[int]
    total: Optional[int]

    @property
    def finished(self) -> int:
        return sum(r.status == "finished" for r in self.runs)

    @property
    def failed(self) -> list[RunResult]:
        return [r for r in self.runs if r.status == "failed"]


def variant_stats(plan: Plan, results: list[RunResult]) -> list[VariantStats]:
    by_name: dict[str, list[RunResult]] = {v.name: [] for v in plan.variants}
    for r in results:
        by_name[r.variant.name].append(r)
    stats = []
    for variant in plan.variants:
        runs = by_name[variant.name]
        done = [r.summary for r in runs if r.status == "finished" and r.summary]
        secs = [s.get("seconds", {}).get("train") for s in done]
        secs = [s for s in secs if s is not None]
        stats.append(VariantStats(
            variant=variant, runs=runs,
            valid=_mean_std([s["valid"]["mean"] for s in done]),
            test=_mean_std([s["test"]["mean"] for s in done]),
            seconds=sum(secs) / len(secs) if secs else math.nan,
            trainable=done[0]["params"]["trainable"] if done else None,
            total=done[0]["params"]["total"] if done else None,
        ))
    return stats


def metric_of(results: list[RunResult]) -> Optional[str]:
    for r in results:
        if r.summary:
            return r.summary.get("metric")
    return None


def ranked(stats: list[VariantStats], metric: Optional[str]) -> list[VariantStats]:
    """Best valid metric first (the OGB protocol selects on valid); variants without a finished run last."""
    higher = metric not in _LOWER_IS_BETTER
    scored = [s for s in stats if not math.isnan(s.valid[0])]
    rest = [s for s in stats if math.isnan(s.valid[0])]
    scored.sort(key=lambda s: -s.valid[0] if higher else s.valid[0])
    return scored + rest


def _num(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "nan" if math.isnan(value) else repr(value)
    return str(value)


CSV_FIELDS = ("variant", "seed", "status", "metric", "valid", "test", "trainable_params", "total_params", "trainable_fraction",
              "seconds", "graphs_per_second", "best_epoch", "error", "run_dir")


def write_csv(path: Path, plan: Plan, results: list[RunResult]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    fields = list(CSV_FIELDS)
    writer.writerow(fields[:1] + plan.keys + fields[1:])
    for r in results:
        s = r.summary or {}
        params = s.get("params", {})
        row = [r.variant.name, *(format_value(r.variant.knobs[k]) for k in plan.keys), r.seed, r.status, s.get("metric", ""),
               _num(s.get("valid", {}).get("mean")), _num(s.get("test", {}).get("mean")), _num(params.get("trainable")),
               _num(params.get("total")), _num(params.get("trainable_fraction")), _num(s.get("seconds", {}).get("train")),
               _num(s.get("graphs_per_second")), _num(s.get("best_epoch")), r.error, str(r.run_dir or "")]
        writer.writerow(row)
    atomic_write_text(path, buffer.getvalue())


def _pm(pair: tuple[float, float]) -> str:
    mean, std = pair
    if math.isnan(mean):
        return "—"
    return f"{mean:.4f}" if math.isnan(std) else f"{mean:.4f} ± {std:.4f}"


def markdown(plan: Plan, results: list[RunResult], command: str) -> str:
    metric = metric_of(results)
    stats = ranked(variant_stats(plan, results), metric)
    n_seeds = len(plan.seeds)
    esc = lambda text: text.replace("|", "\\|")  # noqa: E731
    lines = [
        f"# Ablation of `{plan.recipe_path}`",
        "",
        f"- command: `{command}`",
        f"- mode: {plan.mode}" + (f" (preset {plan.preset})" if plan.preset else "") + f"; {len(plan.variants)} variants x {n_seeds} seed(s) {plan.seeds}",
        "- recipe values of the swept knobs: " + ", ".join(f"`{k}={format_value(v)}`" for k, v in plan.base_knobs.items())
        + " (values that differ from them are in bold)",
        f"- {metric or 'metric'}: mean ± std over seeds; sorted by the valid metric, best first (the test metric is not used to rank)",
        "",
        "| # | " + " | ".join(plan.keys) + f" | valid {metric or ''} | test {metric or ''} | trainable params | train seconds | runs |",
        "|---:|" + "---|" * len(plan.keys) + "---:|---:|---:|---:|---|",
    ]
    for i, s in enumerate(stats, 1):
        runs = f"{s.finished}/{len(s.runs)}" + (f", {len(s.failed)} failed" if s.failed else "")
        params = f"{s.trainable:,} ({100 * s.trainable / s.total:.1f}%)" if s.trainable is not None and s.total else "—"
        secs = "—" if math.isnan(s.seconds) else f"{s.seconds:.1f}"
        knobs = [esc(format_value(s.variant.knobs[k])) for k in plan.keys]
        knobs = [f"**{text}**" if k in s.variant.changes else text for k, text in zip(plan.keys, knobs)]
        lines.append(f"| {i} | " + " | ".join(knobs) + f" | {_pm(s.valid)} | {_pm(s.test)} | {params} | {secs} | {runs} |")
    failures = [r for s in stats for r in s.failed]
    if failures:
        lines += ["", "## Failed runs", ""]
        for r in failures:
            error = r.error.replace("\n", " ")
            lines.append(f"- {r.variant.label}, seed {r.seed}: {error} (log: `{Path('variants') / r.variant.name / f'seed-{r.seed}.log'}`)")
    pending = sum(r.status not in ("finished", "failed") for r in results)
    if pending:
        lines += ["", f"{pending} run(s) have not finished yet; run the same command again to continue."]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- plots


def _ordered_values(plan: Plan, key: str, present: list[Any]) -> list[Any]:
    """x-axis order: ascending for numbers, else the grid's order (the recipe's value first)."""
    grid = next(g for g in plan.grids if g.key == key)
    order: list[Any] = []
    for v in [plan.base_knobs[key], *grid.coerced, *present]:
        if v in present and v not in order:
            order.append(v)
    if _numeric(order):
        order.sort()
    return order


def plot_knobs(plan: Plan, results: list[RunResult], folder: Path) -> list[Path]:
    """plots/<knob>.png: valid and test metric against the knob, mean ± std over seeds. A line joins
    the variants that agree on every other knob (one-at-a-time: the recipe's values); with more
    than six such lines the mean over the other knobs is drawn instead. Values without a finished
    run stay on the axis, marked `no result`."""
    metric = metric_of(results)
    if metric is None:
        return []
    from matplotlib.figure import Figure

    per_run = {(r.variant.name, r.seed): r for r in results}
    written = []
    for key in plan.keys:
        others = [k for k in plan.keys if k != key]
        groups: dict[str, list[Variant]] = {}
        for variant in plan.variants:
            label = ", ".join(f"{k}={format_value(variant.knobs[k])}" for k in others)
            groups.setdefault(label, []).append(variant)
        lines = {label: vs for label, vs in groups.items() if len({json.dumps(v.knobs[key]) for v in vs}) >= 2}
        if not lines:  # a single value of this knob
            recipe_label = ", ".join(f"{k}={format_value(plan.base_knobs[k])}" for k in others)
            lines = {recipe_label: groups.get(recipe_label) or next(iter(groups.values()))}
        marginal = len(lines) > 6
        if marginal:
            lines = {"mean over the other knobs": list(plan.variants)}
        present = [v.knobs[key] for vs in lines.values() for v in vs]
        order = _ordered_values(plan, key, present)
        position = {json.dumps(v): i for i, v in enumerate(order)}
        with_result = set()
        fig = Figure(figsize=(10, 4), dpi=100)
        axes = fig.subplots(1, 2, sharey=True)
        for ax, split in zip(axes, ("valid", "test")):
            for label, variants in lines.items():
                points: dict[int, list[float]] = {}
                for v in variants:
                    for seed in plan.seeds:
                        r = per_run.get((v.name, seed))
                        if r and r.summary:
                            x = position[json.dumps(v.knobs[key])]
                            points.setdefault(x, []).append(r.summary[split]["mean"])
                            with_result.add(x)
                xs = sorted(points)
                pairs = [_mean_std(points[x]) for x in xs]
                means = [m for m, _ in pairs]
                stds = [0.0 if math.isnan(sd) else sd for _, sd in pairs]
                ax.errorbar(xs, means, yerr=stds, marker="o", capsize=4, label=label)
            ax.set_title(f"{split} {metric}")
            ax.grid(alpha=0.3)
        for ax in axes:
            ax.set_xticks(range(len(order)))
            ax.set_xticklabels(
                [format_value(v) + (" *" if v == plan.base_knobs[key] else "") + ("" if i in with_result else "\n(no result)") for i, v in enumerate(order)],
                rotation=30 if len(order) > 6 else 0,
            )
            ax.set_xlim(-0.5, len(order) - 0.5)
            ax.set_xlabel(f"{key}   (* the recipe's value)")
        axes[0].set_ylabel(f"{metric}, mean ± std over {len(plan.seeds)} seed{'s' if len(plan.seeds) > 1 else ''}")
        if len(lines) > 1 or marginal:
            axes[1].legend(fontsize=7)
        fig.suptitle(f"cft ablate {plan.recipe_path.name}: {key}")
        fig.tight_layout()
        target = folder / "plots" / f"{key}.png"
        atomic_write_with(target, lambda tmp, fig=fig: fig.savefig(tmp, format="png"))
        written.append(target)
    return written


def write_outputs(plan: Plan, folder: SweepFolder, command: str, *, plots: bool) -> tuple[list[RunResult], list[Path]]:
    results = collect(plan, folder)
    write_csv(folder.path / "ablation.csv", plan, results)
    atomic_write_text(folder.path / "ablation.md", markdown(plan, results, command))
    written = plot_knobs(plan, results, folder.path) if plots else []
    return results, written


# --------------------------------------------------------------------------- entry point


@dataclass
class SweepOutcome:
    plan: Plan
    results: list[RunResult]
    plots: list[Path]
    ran: int


def run_ablation(
    plan: Plan,
    output_dir: Path,
    *,
    jobs: int = 1,
    data_root: Optional[str] = None,
    device: Optional[str] = None,
    command: str = "",
    on_change: Callable[[Progress], None] = lambda p: None,
    note: Callable[[str], None] = lambda m: None,
) -> SweepOutcome:
    """Run every unfinished (variant, seed) of `plan` into `output_dir`, then write the CSV,
    the markdown table and the plots. Raises TrainingInterrupted after a SIGINT/SIGTERM."""
    folder = SweepFolder(output_dir)
    folder.check(plan)
    with sweep_lock(folder.path):
        folder.write_definition(plan, command)
        sweep = Sweep(plan, folder, jobs=jobs, data_root=data_root, device=device, on_change=on_change, note=note)
        ran = 0

        def on_result(result: RunResult) -> None:
            nonlocal ran
            ran += 1
            if result.status == "finished":
                s = result.summary or {}
                note(f"finished {result.variant.label}, seed {result.seed}: valid {s.get('metric')} {s['valid']['mean']:.4f}, test {s['test']['mean']:.4f}")
            elif result.status == "failed":
                note(f"[red]failed[/red] {result.variant.label}, seed {result.seed}: {result.error}")
            write_outputs(plan, folder, command, plots=False)

        sweep.run(on_result)
        results, plots = write_outputs(plan, folder, command, plots=True)
        if sweep.stop_signal is not None:
            done = sum(r.status == "finished" for r in results)
            name = signal.Signals(sweep.stop_signal).name
            raise TrainingInterrupted(
                f"Sweep interrupted ({name}): {done} of {len(results)} runs finished; interrupted runs keep their checkpoints. "
                f"Run the same command again to continue: {command}"
            )
    return SweepOutcome(plan, results, plots, ran)
