"""`cft fingerprint BUNDLE --input FILE.csv -o emb.npy|emb.csv`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from cft.cli import app
from cft.cli.common import DeviceOption, EvalBatchOption
from cft.console import out


@app.command("fingerprint", epilog="Example: cft fingerprint runs/tox21 --input molecules.csv -o emb.npy")
def fingerprint_command(
    target: Path = typer.Argument(..., help="A bundle .safetensors (or a run folder); a composed bundle gives one vector per part."),
    input_csv: Path = typer.Option(..., "--input", "-i", help="CSV with a SMILES column."),
    output: Path = typer.Option(
        ..., "--output", "-o",
        help="emb.npy ([N, d], or [N, parts, d]; NaN rows for unparsable SMILES, mask in emb.valid.npy) or emb.csv (SMILES, valid, fp_0 ...).",
    ),
    smiles_column: Optional[str] = typer.Option(
        None, "--smiles-column", help="The SMILES column (default: one named like smiles, e.g. SMILES or smi, any case; else the first)."
    ),
    backbone: Optional[Path] = typer.Option(None, "--backbone", help="Backbone file (default: found by fingerprint next to the bundle)."),
    device: Optional[str] = DeviceOption,
    batch_size: int = EvalBatchOption,
) -> None:
    """Write each molecule's pooled adapted representation (input row order; unparsable rows flagged)."""
    from cft.apply.fingerprint import fingerprint_csv

    result = fingerprint_csv(
        target, input_csv, output, smiles_column=smiles_column, backbone_path=str(backbone) if backbone else None,
        batch_size=batch_size, device=device or "auto",
    )
    parts = f"{len(result.parts)} parts ({', '.join(result.parts)}) x " if len(result.parts) > 1 else ""
    shape = f"{result.rows} x {parts}{result.width}"
    message = f"wrote {result.output}: {shape}"
    if result.mask is not None:
        message += f", valid-row mask in {result.mask}"
    if result.invalid_rows:
        rows = ", ".join(str(r) for r in result.invalid_rows[:10]) + (" ..." if len(result.invalid_rows) > 10 else "")
        message += f"; {len(result.invalid_rows)} SMILES could not be parsed (rows {rows}): NaN, valid = 0"
    out.print(message, highlight=False, markup=False)
