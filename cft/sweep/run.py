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

import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from cft.errors import TrainingInterrupted
from cft.files.atomic import atomic_write_text
from cft.sweep.folder import RunResult, SweepFolder, sweep_lock
from cft.sweep.plan import Plan
from cft.sweep.plots import plot_knobs
from cft.sweep.results import collect, markdown, write_csv
from cft.sweep.scheduler import Progress, Sweep


def write_outputs(plan: Plan, folder: SweepFolder, command: str, *, plots: bool) -> tuple[list[RunResult], list[Path]]:
    results = collect(plan, folder)
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
    the markdown table and the plots. Raises TrainingInterrupted after a SIGINT/SIGTERM/SIGHUP
    (exit code 128 + the signal number: 130, 143, 129)."""
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
                f"Run the same command again to continue: {command}",
                exit_code=128 + int(sweep.stop_signal),  # as shells report a signal: 130 SIGINT, 143 SIGTERM, 129 SIGHUP
            )
    return SweepOutcome(plan, results, plots, ran)
