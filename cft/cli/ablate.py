"""`cft ablate RECIPE --grid KEY=V1,V2,...`."""

from __future__ import annotations

import contextlib
import math
import shlex
import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from cft.cli import app
from cft.cli.common import DataRootOption, DeviceOption, SetOption
from cft.console import err, info, is_quiet, out


@app.command(
    "ablate",
    epilog="Example: cft ablate recipes/tox21.yaml --data-root data --grid adapters.rank=1,4,8,16,32 --grid prior.source=labels,identity --seeds 3 --jobs 2 -o runs/tox21-ablation",
)
def ablate_command(
    recipe: Path = typer.Argument(..., help="Recipe YAML the variants start from."),
    grids: Optional[List[str]] = typer.Option(
        None, "--grid", "-g", metavar="KEY=V1,V2,...",
        help="A knob and its values (repeatable). Values are YAML like --set values, split on commas outside brackets and quotes: adapters.layers=[0,1],all.",
    ),
    one_at_a_time: bool = typer.Option(False, "--one-at-a-time", help="Vary one knob at a time around the recipe's values (sensitivity curves) instead of the cartesian product."),
    preset: Optional[str] = typer.Option(
        None, "--preset", metavar="NAME",
        help="paper: temperature, threshold, reg strength, rank (1..32), adapters per layer and prior source; implies --one-at-a-time. --grid adds or replaces keys.",
    ),
    seeds: int = typer.Option(1, "--seeds", min=1, help="Seeds per variant: recipe.seed, recipe.seed+1, ..."),
    jobs: int = typer.Option(1, "--jobs", "-j", min=1, help="Runs at a time, each in its own process (CPU cores split between them; one GPU each where there are several)."),
    output_dir: Optional[Path] = typer.Option(None, "--output-dir", "-o", help="Sweep folder (default: runs/<recipe name>-ablation); rerun the command to resume."),
    sets: Optional[List[str]] = SetOption,
    data_root: Optional[str] = DataRootOption,
    device: Optional[str] = DeviceOption,
    storage: Optional[str] = typer.Option(
        None, "--storage", metavar="URL",
        help="The sweep's Optuna study: a database URL that several machines share (postgresql://..., mysql://..., sqlite:////shared/path.db); default: study.db in the sweep folder.",
    ),
    study: Optional[str] = typer.Option(None, "--study", metavar="NAME", help="Study name in --storage (default: the sweep folder's name)."),
    worker: bool = typer.Option(False, "--worker", help="Join a sweep started elsewhere with the same command and --storage: run waiting runs, then exit."),
    dry_run: bool = typer.Option(False, "--dry-run", help="List the variants and how many runs are left, and run nothing."),
) -> None:
    """Train every variant of a recipe (knob grid x seeds) as real `cft train` runs; write ablation.csv,
    ablation.md and plots. The runs are the trials of an Optuna study (--storage: one database for many
    machines, each running the same command with --worker); finished runs are never run again."""
    from cft.errors import CftError
    from cft.sweep.plan import build_plan
    from cft.sweep.run import run_ablation

    plan = build_plan(recipe, list(grids or []), list(sets or []), one_at_a_time=one_at_a_time, preset=preset, seeds=seeds)
    folder = Path(output_dir) if output_dir else Path("runs") / f"{recipe.stem}-ablation"
    if worker and not storage:
        raise CftError("--worker needs --storage URL: the database of the sweep it joins.",
                       hint="Give the same --storage as the machine that started the sweep, e.g. --storage postgresql://user:password@host/sweeps.")
    if dry_run:
        _print_plan(plan, folder, storage, study)
        return
    command = shlex.join(["cft", *sys.argv[1:]])
    where = "worker of the sweep in " + storage if worker else f"study in {storage or folder / 'study.db'}"
    info(f"cft ablate: {len(plan.variants)} variants x {len(plan.seeds)} seed(s) = {len(plan.runs())} runs, {jobs} at a time, in {folder} ({where})")
    live = _LiveTable(plan) if err.is_terminal and not is_quiet() else None
    note = live.note if live else info
    with live if live else contextlib.nullcontext():
        outcome = run_ablation(plan, folder, jobs=jobs, data_root=data_root, device=device, command=command,
                               storage=storage, study_name=study, worker=worker, on_change=live.update if live else (lambda p: None), note=note)
    _print_results(outcome, folder)
    failed = [r for r in outcome.results if r.status == "failed"]
    if failed:
        err.print(f"[red]{len(failed)} of {len(outcome.results)} runs failed[/red]; their errors are in {folder / 'ablation.md'} and the logs beside their run folders.", highlight=False)
        raise typer.Exit(1)


class _LiveTable:
    """A rich live table on stderr: one row per variant, updated as runs start and end."""

    def __init__(self, plan):
        from rich.live import Live

        self.plan = plan
        self.lines: list[str] = []
        self.progress = None
        self.live = Live(console=err, refresh_per_second=4, transient=True, get_renderable=self._render)

    def __enter__(self):
        self.live.__enter__()
        return self

    def __exit__(self, *exc):
        return self.live.__exit__(*exc)

    def update(self, progress) -> None:
        self.progress = progress

    def note(self, message: str) -> None:
        self.lines = (self.lines + [message])[-4:]

    def _render(self):
        import time

        from rich.console import Group

        table = Table(title="cft ablate", title_justify="left")
        for name in ("variant", "runs", "valid", "test", "time"):
            table.add_column(name, justify="left" if name == "variant" else "right")
        progress = self.progress
        counts = {}
        for variant in self.plan.variants:
            results = [progress.results.get((variant.name, s)) for s in self.plan.seeds] if progress else []
            states = [r.status if r else "pending" for r in results]
            for state in states:
                counts[state] = counts.get(state, 0) + 1
            done = [r.summary for r in results if r and r.summary]
            valid = sum(s["valid"]["mean"] for s in done) / len(done) if done else math.nan
            test = sum(s["test"]["mean"] for s in done) / len(done) if done else math.nan
            running = [progress.started_at.get((variant.name, s)) for s, st in zip(self.plan.seeds, states) if st == "running"] if progress else []
            clock = f"{time.time() - min(running):.0f}s" if running else ""
            runs = f"{states.count('finished')}/{len(states)}"
            if states.count("running"):
                runs += f" [cyan]{states.count('running')} running[/cyan]"
            if states.count("failed"):
                runs += f" [red]{states.count('failed')} failed[/red]"
            table.add_row(variant.label, runs, "" if math.isnan(valid) else f"{valid:.4f}", "" if math.isnan(test) else f"{test:.4f}", clock)
        total = len(self.plan.runs())
        table.caption = f"{counts.get('finished', 0)}/{total} runs finished, {counts.get('running', 0)} running, {counts.get('failed', 0)} failed"
        return Group(table, *self.lines)


def _print_plan(plan, folder: Path, storage: Optional[str], study: Optional[str]) -> None:
    from cft.sweep.folder import SweepFolder
    from cft.sweep.results import collect
    from cft.sweep.run import open_queue

    sweep = SweepFolder(folder)
    queue = open_queue(plan, sweep, storage=storage, study_name=study, worker=False, create=False)  # an existing study only
    status = {(r.variant.name, r.seed): r.status for r in collect(plan, sweep, queue)}
    table = Table(title=f"cft ablate --dry-run: {plan.recipe_path} ({plan.mode})", title_justify="left")
    table.add_column("variant")
    table.add_column("folder")
    table.add_column("finished runs", justify="right")
    finished = 0
    for variant in plan.variants:
        done = sum(status[(variant.name, s)] == "finished" for s in plan.seeds)
        finished += done
        table.add_row(variant.label, variant.name, f"{done}/{len(plan.seeds)}")
    out.print(table)
    runs = len(plan.runs())
    out.print(f"{len(plan.variants)} variants x {len(plan.seeds)} seed(s) = {runs} runs; {finished} already finished, {runs - finished} to run in {folder}", highlight=False)


def _print_results(outcome, folder: Path) -> None:
    from cft.sweep.plan import format_value
    from cft.sweep.results import format_mean_std, metric_of, ranked, variant_stats

    metric = metric_of(outcome.results)
    stats = ranked(variant_stats(outcome.plan, outcome.results), metric)
    table = Table(title=f"cft ablate: {folder} (best valid {metric or ''} first)", title_justify="left")
    # one-at-a-time: one column naming the changed knob; a product: one column per knob
    per_knob = outcome.plan.mode != "one-at-a-time"
    table.add_column("#", justify="right")
    for key in (outcome.plan.keys if per_knob else ["variant"]):
        table.add_column(key)
    for name in (f"valid {metric or ''}", f"test {metric or ''}", "trainable", "runs"):
        table.add_column(name, justify="right")

    for i, s in enumerate(stats, 1):
        runs = f"{s.finished}/{len(s.runs)}" + (f" ({len(s.failed)} failed)" if s.failed else "")
        if per_knob:
            knobs = [f"[bold]{format_value(s.variant.knobs[k])}[/bold]" if k in s.variant.changes else format_value(s.variant.knobs[k]) for k in outcome.plan.keys]
        else:
            knobs = [s.variant.label]
        table.add_row(str(i), *knobs, format_mean_std(s.valid), format_mean_std(s.test), f"{s.trainable:,}" if s.trainable is not None else "—", runs)
    out.print(table)
    out.print(f"ran {outcome.ran} run(s); wrote {folder / 'ablation.csv'}, {folder / 'ablation.md'}"
              + (f" and {len(outcome.plots)} plot(s) in {folder / 'plots'}" if outcome.plots else ""), highlight=False)
