"""`cft predict BUNDLE --input FILE.csv -o OUT.csv`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from cft.cli import app
from cft.cli.common import DeviceOption
from cft.console import out


@app.command("predict", epilog="Example: cft predict runs/tox21 --input molecules.csv --smiles-column smiles -o scores.csv")
def predict_command(
    target: Path = typer.Argument(..., help="A bundle .safetensors (or a run folder)."),
    input_csv: Path = typer.Option(..., "--input", "-i", help="CSV with a SMILES column."),
    output: Path = typer.Option(..., "--output", "-o", help="CSV to write: the SMILES, one score per task, and the invalid_smiles flag."),
    smiles_column: Optional[str] = typer.Option(None, "--smiles-column", help="The SMILES column (default: a column named smiles, else the first)."),
    backbone: Optional[Path] = typer.Option(None, "--backbone", help="Backbone file (default: found by fingerprint next to the bundle)."),
    device: Optional[str] = DeviceOption,
    batch_size: int = typer.Option(256, "--batch-size", min=1),
) -> None:
    """Score molecules with a bundle: one column per task (probabilities for binary tasks)."""
    from cft.apply.predict import predict_csv

    result = predict_csv(
        target, input_csv, output, smiles_column=smiles_column, backbone_path=str(backbone) if backbone else None,
        batch_size=batch_size, device=device or "auto",
    )
    message = f"wrote {result.output}: {result.rows} rows x {len(result.tasks)} tasks"
    if result.invalid:
        rows = ", ".join(str(r) for r in result.invalid_rows[:10]) + (" ..." if result.invalid > 10 else "")
        message += f"; {result.invalid} SMILES could not be parsed (rows {rows}): their scores are empty and invalid_smiles is 1"
    else:
        message += "; every SMILES parsed"
    out.print(message, highlight=False)
