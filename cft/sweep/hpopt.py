"""`cft hpopt`: hyperparameter search over recipe fields with an Optuna sampler (TPE by default).

Each trial is a recipe (the base recipe, after --set, with the sampled values of the --space keys)
trained by real `cft train` processes, one per seed; its objective is the mean over seeds of the
validation metric (maximised for ROC-AUC and AP, minimised for RMSE: cft.spec.HIGHER_IS_BETTER).
The study lives in Optuna's storage (study.db in the output folder, or --storage URL shared by
several machines), so a search resumes, and several machines can search one study together.

Output folder:

    hpopt.json                 what is searched: recipe, --set, space, trials, seeds, sampler, metric
    study.db                   the Optuna study (without --storage)
    trials.csv / trials.md     one row per trial: its values, objective, test metric, state
    plots/trials.png           the objective per trial (best so far) and against each searched value
    best.yaml                  the recipe of the best trial (a recipe `cft train` accepts)
    trials/<id>/recipe.yaml    a trial's recipe; <id> is a hash of its values (a retried trial resumes)
    trials/<id>/seed-S/        its run folder for seed S; seed-S.log its output
"""

from __future__ import annotations

import contextlib
import copy
import csv
import hashlib
import io
import json
import math
import signal
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from pydantic import ValidationError

from cft.errors import CftError, TrainingInterrupted
from cft.files.atomic import atomic_write_json, atomic_write_text, atomic_write_with
from cft.files.runfolder import RunFolder
from cft.recipe.load import read_yaml_file, recipe_to_yaml, resolve_data_root, validate_raw
from cft.recipe.overrides import apply_override, apply_overrides, check_key_path
from cft.recipe.schema import Recipe
from cft.spec import HIGHER_IS_BETTER
from cft.sweep.plan import _NOT_KNOBS, format_value, parse_values
from cft.sweep.results import format_mean_std, mean_std
from cft.sweep.scheduler import StopSignals, _error_from_log, available_cores, start_train, train_command
from cft.sweep.study import _quiet_optuna, load_or_create, open_storage

KINDS = {"float": "a float between LOW and HIGH", "log": "a float between LOW and HIGH on a log scale (LOW > 0)",
         "int": "an integer between LOW and HIGH (both included)", "cat": "one of the listed values"}
_EXAMPLE = "e.g. --space routing.temperature=log:0.1:10, --space adapters.rank=int:4:32, --space train.lr=float:0.001:0.01, --space prior.source=cat:labels,identity"


@dataclass
class Dim:
    key: str
    parts: tuple[str, ...]
    kind: str
    low: Any = None
    high: Any = None
    choices: list[Any] = field(default_factory=list)

    def spec(self) -> dict:
        return {"kind": self.kind, "low": self.low, "high": self.high, "choices": self.choices}

    def suggest(self, trial) -> Any:
        if self.kind == "cat":
            return trial.suggest_categorical(self.key, self.choices)
        if self.kind == "int":
            return trial.suggest_int(self.key, self.low, self.high)
        return trial.suggest_float(self.key, self.low, self.high, log=self.kind == "log")

    def values(self) -> list[Any]:
        """The values that bound the space (checked against the recipe before anything runs)."""
        return list(self.choices) if self.kind == "cat" else [self.low, self.high]


def _bad(text: str, problem: str) -> CftError:
    return CftError(f"--space {text!r}: {problem}", hint=f"Write --space KEY=KIND:..., KIND one of float:LOW:HIGH, log:LOW:HIGH, int:LOW:HIGH, cat:V1,V2,...; {_EXAMPLE}.")


def parse_space(text: str) -> Dim:
    """`KEY=float:LOW:HIGH | log:LOW:HIGH | int:LOW:HIGH | cat:V1,V2,...` -> Dim (key checked against the schema)."""
    if "=" not in text:
        raise _bad(text, "expected KEY=KIND:..., there is no `=`.")
    key, spec = (s.strip() for s in text.split("=", 1))
    parts = check_key_path(key, "--space")
    if key in _NOT_KNOBS:
        raise CftError(f"--space {key}: `{key}` cannot be searched: {_NOT_KNOBS[key]}.")
    kind, _, rest = spec.partition(":")
    kind = kind.strip()
    if kind not in KINDS:
        raise _bad(text, f"unknown kind {kind!r} (kinds: {', '.join(KINDS)}).")
    if kind == "cat":
        if not rest.strip():
            raise _bad(text, "cat: needs at least one value.")
        choices = parse_values(rest, f"--space {key}")
        for c in choices:
            if not (c is None or isinstance(c, (bool, int, float, str))):
                raise _bad(text, f"the value {format_value(c)} is a list or mapping; cat: takes plain values (numbers, strings, true/false, null).")
        if len({json.dumps(c) for c in choices}) != len(choices):
            raise _bad(text, "a value is listed twice.")
        return Dim(key, parts, kind, choices=choices)
    bounds = rest.split(":")
    if len(bounds) != 2 or not all(b.strip() for b in bounds):
        raise _bad(text, f"{kind}: needs LOW:HIGH, got {rest!r}.")
    try:
        low, high = (int(b) if kind == "int" else float(b) for b in bounds)
    except ValueError:
        raise _bad(text, f"{kind}: LOW and HIGH must be {'integers' if kind == 'int' else 'numbers'}, got {rest!r}.") from None
    if not (math.isfinite(low) and math.isfinite(high)) or low >= high:
        raise _bad(text, f"LOW must be smaller than HIGH, got {low} and {high}.")
    if kind == "log" and low <= 0:
        raise _bad(text, f"log: needs LOW > 0, got {low}.")
    return Dim(key, parts, kind, low=low, high=high)


@dataclass
class Search:
    recipe_path: Path
    sets: list[str]
    raw: dict  # the recipe after --set
    base: Recipe
    dims: list[Dim]
    seeds: list[int]
    metric: Optional[str]  # None: `auto` (resolved from the data when the study is created)

    @property
    def keys(self) -> list[str]:
        return [d.key for d in self.dims]

    def recipe_for(self, params: dict[str, Any], origin: str) -> Recipe:
        raw = copy.deepcopy(self.raw)
        for d in self.dims:
            apply_override(raw, d.parts, params[d.key])
        recipe = validate_raw(raw, origin)
        recipe.output_dir = None
        return recipe


def build_search(recipe_path: Path, space_texts: list[str], sets: list[str], *, seeds: int = 1, trials: int = 10) -> Search:
    """Parse and check the whole search (every key, every bound and choice against the recipe's
    schema, cross-field rules included); raise CftError before anything runs."""
    if seeds < 1:
        raise CftError(f"--seeds must be at least 1, got {seeds}.")
    if trials < 1:
        raise CftError(f"--trials must be at least 1, got {trials}.")
    if not space_texts:
        raise CftError("Nothing to search: give at least one --space KEY=KIND:...", hint=f"{_EXAMPLE}.")
    raw, lines = read_yaml_file(recipe_path)
    set_keys = {".".join(parts): text for text, (parts, _v) in zip(sets, apply_overrides(raw, lines, sets))}
    try:
        base = Recipe.model_validate(copy.deepcopy(raw))
    except ValidationError:
        validate_raw(copy.deepcopy(raw), str(recipe_path), lines)
        raise
    dims: list[Dim] = []
    for text in space_texts:
        dim = parse_space(text)
        if dim.key in {d.key for d in dims}:
            raise CftError(f"--space {dim.key} is given twice; give each key once.")
        if dim.key in set_keys:
            raise CftError(f"--space {dim.key} and --set {set_keys[dim.key]} both set {dim.key}; drop one of them.")
        dims.append(dim)
    problems: list[str] = []
    for dim in dims:
        for value in dim.values():
            trial = copy.deepcopy(raw)
            apply_override(trial, dim.parts, value)
            try:
                validate_raw(trial, f"--space {dim.key}={format_value(value)}")
            except CftError as exc:
                for line in exc.message.splitlines()[1:] or [exc.message]:
                    problems.append(f"  --space {dim.key}: the value {format_value(value)}: {line.strip()}")
    if problems:
        raise CftError("Bad --space values (nothing was run):\n" + "\n".join(problems),
                       hint="Keep every bound and choice within what the recipe accepts (`cft recipes show RECIPE` lists the fields).")
    metric = None if base.eval.metric == "auto" else base.eval.metric
    return Search(Path(recipe_path), list(sets), raw, base, dims, [base.seed + i for i in range(seeds)], metric)


def resolve_metric(search: Search, data_root: Optional[str]) -> str:
    """The metric the runs will report (eval.metric, or the dataset's own for `auto`)."""
    if search.metric:
        return search.metric
    from cft.data.dataset import load_dataset

    dataset = load_dataset(search.base.data, resolve_data_root(data_root, search.base.data.root), search.base.seed)
    return dataset.metric


def params_id(params: dict[str, Any]) -> str:
    return hashlib.sha1(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()[:10]


def fingerprint(search: Search) -> str:
    dump = search.base.model_dump(mode="json")
    for key in ("seed", "output_dir", "description"):
        dump.pop(key, None)
    return hashlib.sha256(json.dumps({"recipe": dump, "space": {d.key: d.spec() for d in search.dims}, "seeds": search.seeds},
                                     sort_keys=True).encode()).hexdigest()[:16]


class _Interrupted(Exception):
    pass


class Objective:
    """One trial: the sampled recipe trained once per seed (`cft train` subprocesses, one after the
    other); returns the mean valid metric. A failed seed fails the trial (its error in the trial's
    user attributes); a stop signal asks the run to checkpoint and ends the search."""

    def __init__(self, search: Search, folder: Path, *, jobs: int, data_root: Optional[str], device: Optional[str],
                 signals: StopSignals, note: Callable[[str], None]):
        self.search, self.folder, self.data_root, self.device = search, Path(folder), data_root, device
        self.signals, self.note = signals, note
        self.threads = max(1, available_cores() // max(1, jobs))
        self.ran = 0

    def __call__(self, trial) -> float:
        params = {d.key: d.suggest(trial) for d in self.search.dims}
        label = ", ".join(f"{k}={format_value(v)}" for k, v in params.items())
        try:
            recipe = self.search.recipe_for(params, f"trial {trial.number} ({label})")
        except CftError as exc:
            trial.set_user_attr("outcome", "failed")
            trial.set_user_attr("error", exc.message)
            raise
        tdir = self.folder / "trials" / params_id(params)
        atomic_write_text(tdir / "recipe.yaml", f"# trial values {label} of {self.search.recipe_path}\n" + recipe_to_yaml(recipe))
        atomic_write_json(tdir / "params.json", params)
        trial.set_user_attr("folder", str(tdir))
        trial.set_user_attr("host", socket.gethostname())
        valid, test, seconds = [], [], []
        for seed in self.search.seeds:
            summary = self._run(trial, recipe, tdir, seed, label)
            valid.append(summary["valid"]["mean"])
            test.append(summary["test"]["mean"])
            seconds.append(summary.get("seconds", {}).get("train"))
            trial.set_user_attr("valid", valid)
            trial.set_user_attr("test", test)
            trial.set_user_attr("metric", summary.get("metric"))
            trial.set_user_attr("trainable_params", summary.get("params", {}).get("trainable"))
            trial.set_user_attr("seconds", [s for s in seconds if s is not None])
        trial.set_user_attr("outcome", "finished")
        value = sum(valid) / len(valid)
        self.note(f"trial {trial.number} ({label}): valid {value:.4f}")
        return value

    def _run(self, trial, recipe: Recipe, tdir: Path, seed: int, label: str) -> dict:
        run_dir = tdir / f"seed-{seed}"
        summary_path = run_dir / "summary.json"
        if summary_path.exists() and RunFolder(run_dir).is_run():  # trained before (a retried trial)
            return json.loads(summary_path.read_text(encoding="utf-8"))
        if self.signals.stop_signal is not None:
            raise _Interrupted()
        cmd = train_command(tdir / "recipe.yaml", seed, run_dir, threads=None if recipe.train.threads else self.threads,
                            data_root=self.data_root, device=self.device)
        self.note(f"trial {trial.number} ({label}), seed {seed}: started")
        proc, log = start_train(cmd, tdir / f"seed-{seed}.log", recipe.train.threads or self.threads, None)
        forwarded = None
        try:
            while proc.poll() is None:
                if self.signals.stop_signal is not None:
                    if self.signals.hard_stop:
                        proc.kill()
                    elif forwarded is None:
                        with contextlib.suppress(ProcessLookupError):
                            proc.send_signal(signal.SIGINT)
                        forwarded = time.time()
                time.sleep(0.2)
        finally:
            if proc.poll() is None:  # the search itself failed: the run must not train on unattended
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGINT)
                proc.wait(timeout=60)
            log.close()
        self.ran += 1
        if proc.returncode == 0 and summary_path.exists():
            return json.loads(summary_path.read_text(encoding="utf-8"))
        if self.signals.stop_signal is not None:
            trial.set_user_attr("outcome", "interrupted")
            raise _Interrupted()
        error = _error_from_log(tdir / f"seed-{seed}.log", proc.returncode)
        trial.set_user_attr("outcome", "failed")
        trial.set_user_attr("error", f"seed {seed}: {error}")
        self.note(f"trial {trial.number} ({label}), seed {seed} failed: {error}")
        raise CftError(f"trial {trial.number} ({label}), seed {seed} failed: {error}")


def finished_count(study) -> int:
    """Trials that count towards --trials: complete ones and genuinely failed ones (not interrupted
    trials nor trials whose process died: those are run again)."""
    return sum(t.state.name == "COMPLETE" or (t.state.name == "FAIL" and t.user_attrs.get("outcome") == "failed")
               for t in study.get_trials(deepcopy=False))


@dataclass
class HpoptOutcome:
    best: Optional[Any]
    trials: list
    metric: str
    ran: int
    written: list[Path]


def run_hpopt(search: Search, output_dir: Path, *, trials: int, sampler: str = "tpe", jobs: int = 1, storage: Optional[str] = None,
              study_name: Optional[str] = None, worker: bool = False, data_root: Optional[str] = None, device: Optional[str] = None,
              command: str = "", note: Callable[[str], None] = lambda m: None) -> HpoptOutcome:
    optuna = _quiet_optuna()
    folder = Path(output_dir)
    if folder.exists() and not folder.is_dir():
        raise CftError(f"Output path {folder} is a file, not a folder.", hint="Choose another --output-dir.")
    if folder.exists() and any(folder.iterdir()) and not (folder / "hpopt.json").exists():
        raise CftError(f"Output folder {folder} is not empty and does not hold a cft hpopt search; cft will not write into it.",
                       hint="Choose another --output-dir (or an empty folder).")
    folder.mkdir(parents=True, exist_ok=True)
    name = study_name or folder.resolve().name
    seed = None if worker else search.base.seed  # workers on other machines must not propose the same values
    chosen = optuna.samplers.TPESampler(seed=seed) if sampler == "tpe" else optuna.samplers.RandomSampler(seed=seed)
    store = open_storage(storage, folder, create=not worker)
    study = load_or_create(store, name, "maximize", create=False, sampler=chosen) if store is not None else None
    if study is None and worker:
        raise CftError(f"--worker: there is no study {name!r} in {storage}: a worker joins a search that the same command without --worker has started.",
                       hint="Start the search once without --worker (same --storage), then run the workers.")
    stamp = fingerprint(search)
    if study is None:
        metric = resolve_metric(search, data_root)
        study = load_or_create(store, name, "maximize" if HIGHER_IS_BETTER[metric] else "minimize", sampler=chosen)
        study.set_user_attr("cft", "hpopt")
        study.set_user_attr("search", stamp)
        study.set_user_attr("metric", metric)
    attrs = study.user_attrs
    if attrs.get("cft") != "hpopt" or attrs.get("search") != stamp:
        raise CftError(
            f"The study {name!r} in {storage or folder / 'study.db'} holds another search (another recipe, --set, --space or --seeds).",
            hint="Use another --study name or --output-dir, or the command that started that search.",
        )
    metric = attrs["metric"]
    atomic_write_json(folder / "hpopt.json", {
        "format": "cft-hpopt-1", "command": command, "recipe": str(search.recipe_path), "sets": search.sets,
        "space": {d.key: d.spec() for d in search.dims}, "trials": trials, "seeds": search.seeds, "sampler": sampler,
        "metric": metric, "direction": study.direction.name.lower(), "study": name,
    })
    signals = StopSignals()
    objective = Objective(search, folder, jobs=jobs, data_root=data_root, device=device, signals=signals, note=note)

    def after_trial(study, trial) -> None:
        write_outputs(search, folder, study, metric, plots=False)
        if finished_count(study) >= trials:
            study.stop()

    interrupted = False
    if finished_count(study) < trials:
        with signals.installed():
            try:
                study.optimize(objective, n_trials=None, n_jobs=max(1, jobs), callbacks=[after_trial], catch=(CftError,), gc_after_trial=False)
            except _Interrupted:
                interrupted = True
            if signals.stop_signal is not None:
                interrupted = True
        if interrupted:  # the interrupted trials' values run again first (their run folders resume)
            every = study.get_trials(deepcopy=False)
            again = {t.user_attrs.get("requeued_from") for t in every}
            for t in every:
                if t.state.name == "FAIL" and t.user_attrs.get("outcome") == "interrupted" and t.number not in again:
                    study.enqueue_trial(t.params, user_attrs={"requeued_from": t.number})
    written = write_outputs(search, folder, study, metric, plots=True)
    if interrupted:
        sig = signals.stop_signal or signal.SIGINT
        raise TrainingInterrupted(
            f"Search interrupted ({signal.Signals(sig).name}): {finished_count(study)} of {trials} trials finished; interrupted runs keep "
            f"their checkpoints. Run the same command again to continue: {command}", exit_code=128 + int(sig))
    complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    return HpoptOutcome(study.best_trial if complete else None, study.get_trials(deepcopy=False), metric, objective.ran, written)


# ------------------------------------------------------------------ outputs


def _ranked(study, metric: str) -> list:
    higher = HIGHER_IS_BETTER.get(metric, True)
    done = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    return sorted(done, key=lambda t: -t.value if higher else t.value)


def write_outputs(search: Search, folder: Path, study, metric: str, *, plots: bool) -> list[Path]:
    trials = [t for t in study.get_trials(deepcopy=False) if t.state.name != "WAITING"]
    keys = search.keys
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["trial", "state", *keys, "objective", "valid_std", "test", "seeds_finished", "trainable_params", "seconds", "error", "folder"])
    for t in trials:
        valid, test = t.user_attrs.get("valid", []), t.user_attrs.get("test", [])
        secs = t.user_attrs.get("seconds", [])
        state = {"COMPLETE": "finished", "FAIL": "failed" if t.user_attrs.get("outcome") == "failed" else "interrupted"}.get(t.state.name, t.state.name.lower())
        writer.writerow([t.number, state, *(format_value(t.params[k]) if k in t.params else "" for k in keys),
                         "" if t.value is None else repr(float(t.value)), _num(mean_std(valid)[1]), _num(mean_std(test)[0]), len(valid),
                         t.user_attrs.get("trainable_params", ""), _num(sum(secs) / len(secs) if secs else math.nan), t.user_attrs.get("error", ""),
                         t.user_attrs.get("folder", "")])
    atomic_write_text(folder / "trials.csv", buffer.getvalue())
    ranked = _ranked(study, metric)
    direction = "higher" if HIGHER_IS_BETTER.get(metric, True) else "lower"
    lines = [f"# Hyperparameter search of `{search.recipe_path}`", "",
             f"- objective: mean valid {metric} over seeds {search.seeds} ({direction} is better); the test metric is not used to select",
             f"- {len(ranked)} finished trial(s) of {len(trials)}", "",
             "| # | trial | " + " | ".join(keys) + f" | valid {metric} | test {metric} |", "|---:|---:|" + "---|" * len(keys) + "---:|---:|"]
    for i, t in enumerate(ranked, 1):
        lines.append(f"| {i} | {t.number} | " + " | ".join(format_value(t.params.get(k)) for k in keys)
                     + f" | {format_mean_std(mean_std(t.user_attrs.get('valid', [])))} | {format_mean_std(mean_std(t.user_attrs.get('test', [])))} |")
    failed = [t for t in trials if t.state.name == "FAIL" and t.user_attrs.get("outcome") == "failed"]
    if failed:
        lines += ["", "## Failed trials", ""] + [f"- trial {t.number}: {t.user_attrs.get('error', '')}" for t in failed]
    written = []
    if ranked:
        best = ranked[0]
        lines += ["", f"Best: trial {best.number}, " + ", ".join(f"`{k}={format_value(best.params[k])}`" for k in keys) + " (best.yaml)"]
        recipe = search.recipe_for({k: best.params[k] for k in keys}, f"best trial {best.number}")
        header = (f"# cft hpopt: best of {len(ranked)} trial(s) (trial {best.number}, mean valid {metric} {best.value:.4f} over seeds {search.seeds})\n"
                  f"# of {search.recipe_path} with " + ", ".join(f"{k}={format_value(best.params[k])}" for k in keys) + "\n")
        atomic_write_text(folder / "best.yaml", header + recipe_to_yaml(recipe))
        written.append(folder / "best.yaml")
    atomic_write_text(folder / "trials.md", "\n".join(lines) + "\n")
    if plots and ranked:
        written.append(plot_trials(search, folder, trials, metric))
    return written


def _num(value: Any) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else repr(float(value))


def plot_trials(search: Search, folder: Path, trials: list, metric: str) -> Path:
    """plots/trials.png: the objective of each finished trial against its number (with the best so
    far) and against each searched value (log axis for log: dimensions)."""
    from matplotlib.figure import Figure

    done = [t for t in trials if t.state.name == "COMPLETE"]
    higher = HIGHER_IS_BETTER.get(metric, True)
    fig = Figure(figsize=(4 * (1 + len(search.dims)), 3.6), dpi=100)
    axes = fig.subplots(1, 1 + len(search.dims), squeeze=False)[0]
    xs = [t.number for t in done]
    ys = [t.value for t in done]
    best, running = [], None
    for y in ys:
        running = y if running is None else (max(running, y) if higher else min(running, y))
        best.append(running)
    axes[0].plot(xs, ys, "o", label="trial")
    axes[0].step(xs, best, where="post", label="best so far")
    axes[0].set_xlabel("trial")
    axes[0].set_ylabel(f"mean valid {metric}")
    axes[0].legend(fontsize=7)
    for ax, dim in zip(axes[1:], search.dims):
        values = [t.params.get(dim.key) for t in done]
        if dim.kind == "cat":
            labels = [format_value(c) for c in dim.choices]
            ax.plot([labels.index(format_value(v)) for v in values], ys, "o")
            ax.set_xticks(range(len(labels)))
            ax.set_xticklabels(labels)
        else:
            ax.plot(values, ys, "o")
            if dim.kind == "log":
                ax.set_xscale("log")
        ax.set_xlabel(dim.key)
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.suptitle(f"cft hpopt {search.recipe_path.name}: {len(done)} trials")
    fig.tight_layout()
    target = folder / "plots" / "trials.png"
    atomic_write_with(target, lambda tmp: fig.savefig(tmp, format="png"))
    return target
