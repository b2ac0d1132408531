"""`cft train RECIPE`."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from cft.cli import app
from cft.cli.common import DataRootOption, DeviceOption, SetOption
from cft.console import out
from cft.recipe.load import load_recipe, resolve_data_root


@app.command(
    "train",
    epilog="Example: cft train recipes/tox21.yaml --data-root ../shared/data --set adapters.rank=4 --output-dir runs/tox21-r4",
)
def train_command(
    recipe: Path = typer.Argument(..., help="Recipe YAML (see `cft recipes list`)."),
    sets: Optional[List[str]] = SetOption,
    output_dir: Optional[Path] = typer.Option(None, "--output-dir", "-o", help="Run folder (default: the recipe's output_dir, else runs/<recipe name>)."),
    data_root: Optional[str] = DataRootOption,
    resume: bool = typer.Option(False, "--resume", help="Continue the run in the output folder from its last checkpoint."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace the run in the output folder."),
    device: Optional[str] = DeviceOption,
    nproc: Optional[int] = typer.Option(None, "--nproc", min=1, help="Train with N processes (torch.distributed, launched like torchrun)."),
) -> None:
    """Train adapters (or a baseline) as a recipe says, and write the run folder and bundle."""
    from cft.files.paths import relative_output_dir

    # the recipe is checked before torch is even imported: a typo fails in a second, not ten
    parsed = load_recipe(recipe, sets or [])
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
    resume_cmd = shlex.join(["cft", "train", str(recipe), *sum((["--set", s] for s in sets or []), []), "--output-dir", str(run_dir), "--resume"]
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
