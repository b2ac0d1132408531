"""`cft hpopt RECIPE --space KEY=KIND:... --trials N`."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from cft.cli import app
from cft.cli.common import DataRootOption, DeviceOption, SetOption
from cft.console import info, out


@app.command(
    "hpopt",
    epilog="Example: cft hpopt recipes/tox21.yaml --data-root data --space routing.temperature=log:0.1:10 --space adapters.rank=int:4:32 "
    "--space prior.source=cat:labels,identity --trials 30 --seeds 2 -o runs/tox21-hpopt",
)
def hpopt_command(
    recipe: Path = typer.Argument(..., help="Recipe YAML the trials start from."),
    spaces: Optional[List[str]] = typer.Option(
        None, "--space", metavar="KEY=KIND:...",
        help="A recipe field and its range (repeatable): float:LOW:HIGH, log:LOW:HIGH (log scale), int:LOW:HIGH or cat:V1,V2,... e.g. routing.temperature=log:0.1:10.",
    ),
    trials: int = typer.Option(20, "--trials", "-n", min=1, help="Finished trials to reach (over every process sharing the study)."),
    sampler: str = typer.Option("tpe", "--sampler", help="tpe (Optuna's TPE, the default) or random."),
    seeds: int = typer.Option(1, "--seeds", min=1, help="Seeds per trial (recipe.seed, recipe.seed+1, ...); the objective is their mean valid metric."),
    jobs: int = typer.Option(1, "--jobs", "-j", min=1, help="Trials at a time on this machine, each run its own `cft train` process (CPU cores split between them)."),
    output_dir: Optional[Path] = typer.Option(None, "--output-dir", "-o", help="Search folder (default: runs/<recipe name>-hpopt); rerun the command to resume."),
    storage: Optional[str] = typer.Option(
        None, "--storage", metavar="URL", help="Optuna study database shared by several machines (postgresql://..., sqlite:////shared/path.db); default: study.db in the folder.",
    ),
    study: Optional[str] = typer.Option(None, "--study", metavar="NAME", help="Study name in --storage (default: the search folder's name)."),
    worker: bool = typer.Option(False, "--worker", help="Join a search started elsewhere with the same command and --storage."),
    sets: Optional[List[str]] = SetOption,
    data_root: Optional[str] = DataRootOption,
    device: Optional[str] = DeviceOption,
) -> None:
    """Search recipe fields with Optuna (TPE by default): each trial is trained by real `cft train` runs;
    writes best.yaml (the best trial's recipe), trials.csv, trials.md and plots/trials.png."""
    from cft.errors import CftError
    from cft.sweep.hpopt import build_search, run_hpopt

    if sampler not in ("tpe", "random"):
        raise CftError(f"--sampler {sampler!r} is not a sampler; choose tpe (the default) or random.")
    if worker and not storage:
        raise CftError("--worker needs --storage URL: the database of the search it joins.",
                       hint="Give the same --storage as the machine that started the search.")
    search = build_search(recipe, list(spaces or []), list(sets or []), seeds=seeds, trials=trials)
    folder = Path(output_dir) if output_dir else Path("runs") / f"{recipe.stem}-hpopt"
    command = shlex.join(["cft", *sys.argv[1:]])
    info(f"cft hpopt: {trials} trials x {len(search.seeds)} seed(s) over {', '.join(search.keys)} ({sampler}), {jobs} at a time, in {folder}")
    outcome = run_hpopt(search, folder, trials=trials, sampler=sampler, jobs=jobs, storage=storage, study_name=study, worker=worker,
                        data_root=data_root, device=device, command=command, note=info)
    _print(outcome, search, folder)
    if outcome.best is None:
        from cft.console import err

        err.print(f"[red]no trial finished[/red]; the errors are in {folder / 'trials.md'} and the logs in {folder / 'trials'}.", highlight=False)
        raise typer.Exit(1)


def _print(outcome, search, folder: Path) -> None:
    from cft.sweep.hpopt import _ranked
    from cft.sweep.plan import format_value

    class _S:  # the ranking helper takes a study; the trials are enough
        def __init__(self, trials):
            self.trials = trials

        def get_trials(self, deepcopy=False):
            return self.trials

    ranked = _ranked(_S(outcome.trials), outcome.metric)
    table = Table(title=f"cft hpopt: {folder} (best valid {outcome.metric} first)", title_justify="left")
    table.add_column("trial", justify="right")
    for key in search.keys:
        table.add_column(key)
    table.add_column(f"valid {outcome.metric}", justify="right")
    for t in ranked[:10]:
        table.add_row(str(t.number), *(format_value(t.params.get(k)) for k in search.keys), f"{t.value:.4f}")
    out.print(table)
    out.print(f"ran {outcome.ran} run(s); wrote {folder / 'trials.csv'}, {folder / 'trials.md'}" + (f", {folder / 'best.yaml'}" if outcome.best else "")
              + (f" and {folder / 'plots' / 'trials.png'}" if any(p.name == "trials.png" for p in outcome.written) else ""), highlight=False)
