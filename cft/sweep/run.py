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

The runs are the trials of one Optuna study (cft.sweep.study): an SQLite file in the folder by
default, or `--storage URL` (a database that processes on several machines share; `--worker` joins
a sweep started elsewhere). Each process pulls WAITING trials; the storage gives each to one
process. Resuming is the study's: a finished run (a COMPLETE trial) is never run again; an
interrupted run is enqueued again at once, a run whose process died is failed by the heartbeat
check and enqueued again, and a failed run is enqueued again when the sweep command is run again;
each restarts with `cft train --resume`, which continues from its checkpoint. Variant folder names depend only on the knob values that differ from the recipe,
so re-running the same (or an extended) sweep finds the runs it already has.
"""

from __future__ import annotations

import hashlib
import json
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from cft.errors import CftError, TrainingInterrupted
from cft.files.atomic import atomic_write_text
from cft.spec import HIGHER_IS_BETTER
from cft.sweep.folder import RunResult, SweepFolder
from cft.sweep.plan import Plan
from cft.sweep.plots import plot_knobs
from cft.sweep.results import collect, markdown, study_outcomes, summary_attrs, write_csv
from cft.sweep.scheduler import Progress, Sweep
from cft.sweep.study import RUN_ATTR, Queue, is_duplicate, load_or_create, open_storage


def write_outputs(plan: Plan, folder: SweepFolder, command: str, *, plots: bool, queue=None) -> tuple[list[RunResult], list[Path]]:
    results = collect(plan, folder, queue)
    write_csv(folder.path / "ablation.csv", plan, results)
    atomic_write_text(folder.path / "ablation.md", markdown(plan, results, command))
    written = plot_knobs(plan, results, folder.path) if plots else []
    return results, written


@dataclass
class SweepOutcome:
    plan: Plan
    results: list[RunResult]
    plots: list[Path]
    ran: int


def run_key(variant_name: str, seed: int) -> str:
    return f"{variant_name}/seed-{seed}"


def recipe_fingerprint(plan: Plan) -> str:
    """The recipe every variant starts from (after --set), without what does not define the runs."""
    dump = plan.base.model_dump(mode="json")
    for key in ("seed", "output_dir", "description"):
        dump.pop(key, None)
    return hashlib.sha256(json.dumps(dump, sort_keys=True).encode()).hexdigest()[:16]


def default_study_name(output_dir: Path) -> str:
    return Path(output_dir).resolve().name


def open_queue(plan: Plan, folder: SweepFolder, *, storage: Optional[str], study_name: Optional[str], worker: bool,
               create: bool = True) -> Optional[Queue]:
    """The sweep's study (created by the first non-worker process), checked against this plan."""
    name = study_name or default_study_name(folder.path)
    where = storage or str(folder.path / "study.db")
    store = open_storage(storage, folder.path, create=create and not worker)
    if store is None:
        return None
    metric = plan.base.eval.metric
    direction = "minimize" if metric != "auto" and not HIGHER_IS_BETTER[metric] else "maximize"
    study = load_or_create(store, name, direction, create=create and not worker)
    if study is None:
        if not create:
            return None
        raise CftError(
            f"--worker: there is no study {name!r} in {where}: a worker joins a sweep that the same command without --worker has started.",
            hint="Start the sweep once without --worker (on any machine, with the same --storage), then run the workers.",
        )
    attrs = study.user_attrs
    fingerprint = recipe_fingerprint(plan)
    if attrs.get("cft") not in (None, "ablate"):
        raise CftError(f"The study {name!r} in {where} is a `cft {attrs.get('cft')}` study, not a sweep.", hint="Use another --study name or --output-dir.")
    if attrs.get("recipe") not in (None, fingerprint):
        raise CftError(
            f"The study {name!r} in {where} holds a sweep of another recipe (or other --set values) than {plan.recipe_path}.",
            hint="Use another --study name (or --output-dir), or the recipe and --set values that started the sweep.",
        )
    runs = sorted(run_key(v.name, s) for v, s in plan.runs())
    if worker and sorted(attrs.get("runs", [])) != runs:
        theirs = set(attrs.get("runs", []))
        differ = sorted(theirs.symmetric_difference(runs))
        raise CftError(
            f"--worker: this command's sweep is not the one in study {name!r} ({len(differ)} run(s) differ, e.g. {differ[0]}).",
            hint="Run exactly the command that started the sweep (same recipe, --grid, --preset, --seeds, --set), adding --worker.",
        )
    queue = Queue(study, store)
    if not worker and create:
        study.set_user_attr("cft", "ablate")
        study.set_user_attr("recipe", fingerprint)
        study.set_user_attr("runs", runs)
    return queue


def enqueue_missing(plan: Plan, folder: SweepFolder, queue: Queue) -> int:
    """Every run without a COMPLETE, RUNNING or WAITING trial becomes a WAITING trial; a run whose
    folder already holds a finished run (an earlier sweep) is recorded as COMPLETE instead."""
    from optuna.trial import TrialState

    live = {TrialState.COMPLETE, TrialState.RUNNING, TrialState.WAITING}
    have = {t.user_attrs.get(RUN_ATTR) for t in queue.trials() if t.state in live and not is_duplicate(t)}
    added = 0
    for variant, seed in plan.runs():
        key = run_key(variant.name, seed)
        if key in have:
            continue
        attrs = {RUN_ATTR: key, "variant": variant.name, "seed": seed, "knobs": variant.knobs}
        local = folder.status(variant, seed)
        if local.status == "finished" and local.summary:
            summary = summary_attrs(local.summary)
            queue.add_complete(summary["valid"]["mean"], {**attrs, "summary": summary, "run_dir": str(local.run_dir), "outcome": "finished"})
        else:
            queue.enqueue(attrs)
            added += 1
    return added


def run_ablation(
    plan: Plan,
    output_dir: Path,
    *,
    jobs: int = 1,
    data_root: Optional[str] = None,
    device: Optional[str] = None,
    command: str = "",
    storage: Optional[str] = None,
    study_name: Optional[str] = None,
    worker: bool = False,
    on_change: Callable[[Progress], None] = lambda p: None,
    note: Callable[[str], None] = lambda m: None,
) -> SweepOutcome:
    """Run the plan's unfinished runs into `output_dir`, pulling them from the sweep's study, then
    write the CSV, the markdown table and the plots. Raises TrainingInterrupted after a
    SIGINT/SIGTERM/SIGHUP (exit code 128 + the signal number: 130, 143, 129)."""
    folder = SweepFolder(output_dir)
    folder.check(plan)
    folder.path.mkdir(parents=True, exist_ok=True)
    queue = open_queue(plan, folder, storage=storage, study_name=study_name, worker=worker)
    folder.write_definition(plan, command)
    if not worker:
        enqueue_missing(plan, folder, queue)
    sweep = Sweep(plan, folder, queue, jobs=jobs, data_root=data_root, device=device, on_change=on_change, note=note, worker=worker,
                  outcomes=lambda: study_outcomes(plan, folder, queue))
    ran = 0

    def on_result(result: RunResult) -> None:
        nonlocal ran
        ran += 1
        if result.status == "finished":
            s = result.summary or {}
            note(f"finished {result.variant.label}, seed {result.seed}: valid {s.get('metric')} {s['valid']['mean']:.4f}, test {s['test']['mean']:.4f}")
        elif result.status == "failed":
            note(f"[red]failed[/red] {result.variant.label}, seed {result.seed}: {result.error}")
        write_outputs(plan, folder, command, plots=False, queue=queue)

    sweep.run(on_result)
    results, plots = write_outputs(plan, folder, command, plots=True, queue=queue)
    if sweep.stop_signal is not None:
        done = sum(r.status == "finished" for r in results)
        name = signal.Signals(sweep.stop_signal).name
        raise TrainingInterrupted(
            f"Sweep interrupted ({name}): {done} of {len(results)} runs finished; interrupted runs keep their checkpoints. "
            f"Run the same command again to continue: {command}",
            exit_code=128 + int(sweep.stop_signal),  # as shells report a signal: 130 SIGINT, 143 SIGTERM, 129 SIGHUP
        )
    return SweepOutcome(plan, results, plots, ran)
