"""`cft eval RUN_DIR_OR_BUNDLE`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from cft.cli import app
from cft.cli.common import DataRootOption, DeviceOption, EvalBatchOption
from cft.console import out
from cft.files.atomic import atomic_write_json
from cft.recipe.load import resolve_data_root


@app.command("eval", epilog="Example: cft eval runs/tox21 --data-root data --split test --json test.json")
def eval_command(
    target: Path = typer.Argument(..., help="A run folder or a bundle .safetensors file."),
    data_root: Optional[str] = DataRootOption,
    split: str = typer.Option("test", "--split", help="train, valid or test."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the result as JSON here."),
    backbone: Optional[Path] = typer.Option(None, "--backbone", help="Backbone file (default: found by fingerprint next to the bundle)."),
    data: Optional[str] = typer.Option(None, "--data", help="Evaluate on this CSV instead of the bundle's recorded data (same split settings)."),
    metric: Optional[str] = typer.Option(None, "--metric", help="rocauc, ap or rmse (default: the bundle's)."),
    device: Optional[str] = DeviceOption,
    batch_size: int = EvalBatchOption,
) -> None:
    """Score a bundle per task on a split of its data and print a table (and JSON)."""
    from cft.apply.evaluate import evaluate_bundle
    from cft.errors import CftError
    from cft.spec import METRICS

    if split not in ("train", "valid", "test"):
        raise CftError(f"--split {split!r}: choose train, valid or test.")
    if metric not in (None, *METRICS):
        raise CftError(f"--metric {metric!r}: choose {', '.join(METRICS)}.")
    result = evaluate_bundle(
        target, data_root=resolve_data_root(data_root, None), split=split, backbone_path=str(backbone) if backbone else None,
        data_override=data, metric=metric, device=device or "auto", batch_size=batch_size,
    )
    table = Table(title=f"{result['bundle']} on {split} ({result['molecules']} molecules)", title_justify="left")
    table.add_column("task")
    table.add_column(result["metric"], justify="right")
    for task, value in result["per_task"].items():
        table.add_row(task, "n/a" if value is None else f"{value:.4f}")
    table.add_section()
    table.add_row("[bold]mean[/bold]", f"[bold]{result['mean']:.4f}[/bold]")
    out.print(table)
    if json_out:
        atomic_write_json(json_out, result)
