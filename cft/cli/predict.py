"""`cft predict BUNDLE --input FILE.csv -o OUT.csv`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from cft.cli import app
from cft.cli.common import DeviceOption, EvalBatchOption
from cft.console import out


@app.command("predict", epilog="Example: cft predict runs/tox21 --input molecules.csv --smiles-column smiles --keep-columns id -o scores.csv")
def predict_command(
    target: Path = typer.Argument(..., help="A bundle .safetensors (or a run folder)."),
    input_csv: Path = typer.Option(..., "--input", "-i", help="CSV with a SMILES column."),
    output: Path = typer.Option(..., "--output", "-o", help="CSV to write: the input's columns, one score per task, and the invalid_smiles flag."),
    smiles_column: Optional[str] = typer.Option(
        None, "--smiles-column", help="The SMILES column (default: one named like smiles, e.g. SMILES or smi, any case; else the first)."
    ),
    keep_columns: Optional[str] = typer.Option(
        None, "--keep-columns", metavar="A,B",
        help="Input columns to write beside the scores, comma-separated (the SMILES column is always kept). Default: every input column.",
    ),
    backbone: Optional[Path] = typer.Option(None, "--backbone", help="Backbone file (default: found by fingerprint next to the bundle)."),
    device: Optional[str] = DeviceOption,
    batch_size: int = EvalBatchOption,
) -> None:
    """Score molecules with a bundle: the input's columns, then one column per task (probabilities for binary tasks), then invalid_smiles."""
    from cft.apply.predict import predict_csv

    keep = [c.strip() for c in keep_columns.split(",") if c.strip()] if keep_columns is not None else None
    result = predict_csv(
        target, input_csv, output, smiles_column=smiles_column, keep_columns=keep, backbone_path=str(backbone) if backbone else None,
        batch_size=batch_size, device=device or "auto",
    )
    message = f"wrote {result.output}: {result.rows} rows x {len(result.tasks)} tasks"
    if result.invalid:
        rows = ", ".join(str(r) for r in result.invalid_rows[:10]) + (" ..." if result.invalid > 10 else "")
        message += f"; {result.invalid} SMILES could not be parsed (rows {rows}): their scores are empty and invalid_smiles is 1"
    else:
        message += "; every SMILES parsed"
    if result.replaced:
        message += f"; input column(s) {', '.join(result.replaced)} replaced by the scores of the same name"
    out.print(message, highlight=False, markup=False)
