"""`cft inspect-routing RUN_DIR_OR_BUNDLE`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from cft.cli import app
from cft.console import out


@app.command("inspect-routing", epilog="Example: cft inspect-routing nr_sr.safetensors --layer 2 --png routing.png --json routing.json")
def inspect_routing_command(
    target: Path = typer.Argument(..., help="A run folder or a bundle (composed or not)."),
    layer: Optional[int] = typer.Option(None, "--layer", help="Only this insertion layer (default: all)."),
    png: Optional[Path] = typer.Option(None, "--png", help="Also draw one labelled heatmap per layer (plus the epoch history of a run folder)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write every route, entropy and active count as JSON."),
    max_rows: int = typer.Option(40, "--max-rows", min=2, help="More tasks than this are shown as clusters of similar tasks."),
) -> None:
    """Show which adapters each task routes to, per layer: rows tasks, columns adapters by source bundle.

    Under routing.readout task the last insertion layer's rows are each task's gates over the experts it reads;
    lower layers (and every layer of a mixture bundle) feed a mixture all tasks share."""
    from cft.files.atomic import atomic_paths, atomic_write_json
    from cft.views.routing import (
        load_report,
        pick_layers,
        terminal_lines,
        to_json,
        write_png,
    )

    report = load_report(target)
    layers = pick_layers(report, layer)
    with atomic_paths(png, json_out) as (png_tmp, json_tmp):  # both files or neither
        for line in terminal_lines(report, layers, out.width, max_rows):
            out.print(line, highlight=False)
        if png_tmp is not None:
            write_png(report, png_tmp, layers)
        if json_tmp is not None:
            atomic_write_json(json_tmp, to_json(report, layers, max_rows))
    for written in (png, json_out):
        if written:
            out.print(f"wrote {written}", highlight=False)
