"""`cft prior build|show`."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from cft.cli import app
from cft.cli.common import DataRootOption
from cft.console import out

prior_app = typer.Typer(help="Build and show task relation matrices (the structural prior).", no_args_is_help=True)
app.add_typer(prior_app, name="prior")


@prior_app.command(
    "build",
    epilog="Example: cft prior build --bundles runs/nr/bundle.safetensors runs/sr/bundle.safetensors --data-root data -o rel.npy --png rel.png",
)
def build_command(
    bundles: Optional[List[Path]] = typer.Argument(None, metavar="[BUNDLE]...", help="With --bundles: bundles (or run folders) whose tasks, in order, the matrix covers."),
    use_bundles: bool = typer.Option(False, "--bundles", help="Build over the union of the bundles given as arguments, in bundle order (labels from the data they record, or --data)."),
    data: Optional[str] = typer.Option(None, "--data", help="CSV (or recipe YAML) whose training-split labels give the relation."),
    output: Path = typer.Option(..., "--output", "-o", help="Write the matrix here: .npy (task names beside it in .tasks.json) or labelled .csv."),
    tasks: Optional[List[str]] = typer.Option(None, "--tasks", help="With --data: task columns (names or globs; repeatable); default every label column."),
    method: str = typer.Option("phi", "--method", help="phi (|phi| correlation), jaccard (of positives) or cosine."),
    min_support: int = typer.Option(20, "--min-support", min=1, help="Minimum co-labelled molecules for a task pair to get an edge."),
    min_value: float = typer.Option(0.1, "--min-value", min=0.0, help="Edges weaker than this are dropped."),
    top_k: Optional[int] = typer.Option(None, "--top-k", min=1, help="Keep each task's K strongest links (symmetrised)."),
    png: Optional[Path] = typer.Option(None, "--png", help="Also draw the matrix as a labelled image."),
    data_root: Optional[str] = DataRootOption,
    max_rows: int = typer.Option(40, "--max-rows", min=2, help="Terminal: more tasks than this are shown as clusters."),
) -> None:
    """Build a task relation matrix from training labels (of a dataset, or of the bundles' data)."""
    from cft.errors import CftError
    from cft.prior.files import write_relation
    from cft.prior.relation import METHODS
    from cft.prior.sources import relation_for_bundles, relation_from_dataset
    from cft.recipe.load import resolve_data_root
    from cft.views.prior import prior_png

    if method not in METHODS:
        raise CftError(f"--method {method!r}: choose one of {', '.join(METHODS)}.")
    if output.suffix not in (".npy", ".csv"):
        raise CftError(f"-o {output}: write a relation matrix as .npy or .csv.")
    root = resolve_data_root(data_root, None)
    settings = dict(method=method, min_support=min_support, min_value=min_value, top_k=top_k)
    if bundles:
        if tasks:
            raise CftError("--tasks selects columns of --data; with bundles the tasks are the bundles' own.")
        matrix, names, details = relation_for_bundles(bundles, root, data, **settings)
    elif use_bundles:
        raise CftError("--bundles needs the bundles as arguments: cft prior build --bundles A.safetensors B.safetensors -o rel.npy.")
    elif data:
        matrix, details = relation_from_dataset(data, None, root, patterns=tasks or None, **settings)
        names = details["tasks"]
    else:
        raise CftError("Give --data CSV or --bundles A B ...: the matrix is built from training labels.")
    from cft.files.atomic import atomic_paths

    groups = details.get("groups", [])
    with atomic_paths(png) as (png_tmp,):  # the matrix, its task names and the picture: all or none
        if png_tmp is not None:
            prior_png(matrix, names, str(output), png_tmp, groups=groups)
        write_relation(output, matrix, names)
    edges = int(((matrix > 0).sum() - len(names)) // 2)
    possible = len(names) * (len(names) - 1) // 2
    out.print(
        f"wrote {output}: {len(names)} tasks, {edges} of {possible} pairs linked ({method}, min support {min_support}, "
        f"min value {min_value:g}{f', top {top_k}' if top_k else ''}), from {details['train_molecules']} training molecules of {details['data']}",
        highlight=False,
    )
    if output.suffix == ".npy":
        out.print(f"task names: {output.with_suffix('.tasks.json')}", highlight=False)
    _show(matrix, names, f"{output}", None, max_rows, groups)
    if png:
        out.print(f"wrote {png}", highlight=False)


@prior_app.command("show", epilog="Example: cft prior show runs/tox21 --png prior.png")
def show_command(
    target: Path = typer.Argument(..., help="A relation matrix (.npy or .csv), a run folder or a bundle."),
    png: Optional[Path] = typer.Option(None, "--png", help="Also draw it as a labelled image."),
    max_rows: int = typer.Option(40, "--max-rows", min=2, help="More tasks than this are shown as clusters."),
) -> None:
    """Show a relation matrix as a heatmap in the terminal (and as a PNG)."""
    from cft.prior.sources import relation_of_target

    matrix, names, description, groups = relation_of_target(target)
    _show(matrix, names, description, png, max_rows, groups)


def _show(matrix, names, description: str, png: Optional[Path], max_rows: int, groups=()) -> None:
    from cft.views.prior import prior_png, prior_terminal

    for line in prior_terminal(matrix, names, description, out.width, max_rows, groups):
        out.print(line, highlight=False)
    if png:
        prior_png(matrix, names, description, png, groups=groups)
        out.print(f"wrote {png}", highlight=False)
