"""`cft train RECIPE`."""

from __future__ import annotations

import shlex
import sys
from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from cft.cli import app
from cft.cli.common import DataRootOption, DeviceOption, SetOption
from cft.console import out
from cft.recipe.load import load_recipe, resolve_data_root


class TaskType(str, Enum):
    auto = "auto"
    classification = "classification"
    regression = "regression"


@app.command(
    "train",
    epilog="Examples: cft train recipes/tox21.yaml --data-root data --set adapters.rank=4 --output-dir runs/tox21-r4   |   "
    "cft train --data my.csv --smiles-column smiles --task-type classification -o runs/mine   (the shipped recipe `default`: cft recipes show default)",
)
def train_command(
    recipe: Optional[Path] = typer.Argument(
        None, help="Recipe YAML or a shipped recipe's name (see `cft recipes list`); default with --data: the shipped `default` recipe.",
    ),
    data: Optional[Path] = typer.Option(
        None, "--data", "-i", metavar="CSV",
        help="Train on this chemprop-style CSV (a SMILES column, one column per task, empty = missing) instead of the recipe's data.",
    ),
    smiles_column: Optional[str] = typer.Option(
        None, "--smiles-column", help="With --data: the SMILES column (default: one named like smiles, any case; else the first).",
    ),
    tasks: Optional[List[str]] = typer.Option(
        None, "--tasks", metavar="A,B",
        help="With --data: the task columns, names or globs such as 'NR-*', comma-separated or repeated (default: every other column).",
    ),
    task_type: Optional[TaskType] = typer.Option(
        None, "--task-type", "-t", case_sensitive=False,
        help="With --data: classification (0/1 labels, ROC-AUC), regression (RMSE) or auto (per column: 0/1 is binary).",
    ),
    sets: Optional[List[str]] = SetOption,
    output_dir: Optional[Path] = typer.Option(
        None, "--output-dir", "-o", help="Run folder (default: the recipe's output_dir, else runs/<recipe name>, or runs/<CSV name> with --data).",
    ),
    data_root: Optional[str] = DataRootOption,
    resume: bool = typer.Option(False, "--resume", help="Continue the run in the output folder from its last checkpoint."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace the run in the output folder."),
    device: Optional[str] = DeviceOption,
    nproc: Optional[int] = typer.Option(None, "--nproc", min=1, help="Train with N processes (torch.distributed, launched like torchrun)."),
) -> None:
    """Train adapters (or a baseline) as a recipe says, and write the run folder and bundle. With
    --data CSV and no recipe, the shipped `default` recipe trains on that CSV; --set changes any field."""
    from cft.errors import CftError
    from cft.files.paths import relative_output_dir
    from cft.recipe.shipped import DEFAULT_RECIPE, csv_overrides, resolve_recipe

    if recipe is None and data is None:
        raise CftError("cft train needs a RECIPE or --data CSV.", hint="e.g. cft train recipes/quickstart.yaml, or cft train --data my.csv -o runs/mine.")
    if data is None and (smiles_column is not None or tasks or task_type is not None):
        raise CftError(
            "--smiles-column, --tasks and --task-type apply to --data CSV.", hint="In a recipe, set data.smiles_column, data.tasks or data.task_type."
        )
    recipe_path = resolve_recipe(recipe if recipe is not None else DEFAULT_RECIPE)
    task_list = [t.strip() for item in tasks or [] for t in item.split(",") if t.strip()]
    data_sets = csv_overrides(data, smiles_column, task_list, task_type.value if task_type else None) if data is not None else []
    all_sets = data_sets + list(sets or [])  # the user's --set come last and win
    # the recipe is checked before torch is even imported: a typo fails in a second, not ten
    parsed = load_recipe(recipe_path, all_sets)
    if data is not None and not output_dir and not any(s.split("=", 1)[0].strip() == "output_dir" for s in sets or []):
        parsed.output_dir = str(Path("runs") / Path(data).name.split(".")[0])
    # --output-dir is the user's choice; a folder named inside the recipe must stay below "."
    run_dir = Path(output_dir) if output_dir else relative_output_dir(parsed.output_dir, "output_dir")
    from cft.training.distributed import context_from_env, launch_local

    if nproc and nproc > 1:
        from cft.files.runfolder import RunFolder

        RunFolder(run_dir).check(parsed, resume=resume, overwrite=overwrite)  # refuse before starting N processes
        launch_local(nproc, sys.argv[1:], parsed.train.dist_backend)
        return
    root = resolve_data_root(data_root, parsed.data.root)
    dist = context_from_env(parsed.train.dist_backend)
    resume_cmd = shlex.join(["cft", "train", str(recipe_path), *sum((["--set", s] for s in all_sets), []), "--output-dir", str(run_dir), "--resume"]
                            + (["--data-root", data_root] if data_root else []))
    from cft.training.trainer import train_recipe

    try:
        summary = train_recipe(parsed, run_dir, root, resume=resume, overwrite=overwrite, device=device, dist=dist, resume_command=resume_cmd)
    finally:
        dist.close()
    if dist.is_main:
        print_summary(summary, run_dir)


def print_summary(summary: dict, run_dir: Path) -> None:
    metric = summary["metric"]
    table = Table(title=f"cft train: {run_dir}", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    table.add_row("best epoch", str(summary["best_epoch"]))
    table.add_row(f"valid {metric}", f"{summary['valid']['mean']:.4f}")
    table.add_row(f"test {metric}", f"{summary['test']['mean']:.4f}")
    p = summary["params"]
    table.add_row("trainable params", f"{p['trainable']:,} of {p['total']:,} ({100 * p['trainable'] / p['total']:.1f}%)")
    secs = summary["seconds"]
    table.add_row("time", f"featurise {secs['featurise']:.1f}s, train {secs['train']:.1f}s")
    if summary.get("graphs_per_second"):
        table.add_row("throughput", f"{summary['graphs_per_second']:.0f} graphs/s")
    table.add_row("bundle", str(run_dir / "bundle.safetensors"))
    out.print(table)
