"""`cft predict`: SMILES in, one score per task out (probabilities for binary tasks).

Rows keep the input's order, and the input's columns are kept beside the scores (all of them,
as chemprop does, or the SMILES column and the ones named in `keep_columns`), so that an ID or
name column joins the predictions back. An input column named like a task is replaced by that
task's scores (chemprop does the same). SMILES that RDKit cannot parse get empty scores and
`invalid_smiles = 1`; the caller reports how many there were.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from cft.apply.molecules import featurise_input, read_input
from cft.errors import CftError
from cft.files.atomic import atomic_write_with
from cft.files.bundle import load_bundle, resolve_bundle_path
from cft.spec import EVAL_BATCH_SIZE
from cft.training.distributed import pick_device
from cft.training.inference import predict_logits

FLAG_COLUMN = "invalid_smiles"


@dataclass
class PredictResult:
    output: Path
    rows: int
    invalid: int
    tasks: list[str]
    invalid_rows: list[int]  # 1-based data rows (the header is row 1 of the file, so file line = row + 1)
    kept: list[str] = field(default_factory=list)  # input columns written beside the scores
    replaced: list[str] = field(default_factory=list)  # input columns replaced by the task scores of the same name


def predict_csv(
    target: str | Path,
    input_csv: str | Path,
    output: str | Path,
    *,
    smiles_column: Optional[str] = None,
    keep_columns: Optional[list[str]] = None,
    backbone_path: Optional[str] = None,
    batch_size: int = EVAL_BATCH_SIZE,
    device: str = "auto",
) -> PredictResult:
    input_csv, output = Path(input_csv), Path(output)
    if output.resolve() == input_csv.resolve():
        raise CftError(f"-o {output} is the input file; write the predictions elsewhere.")
    bundle = resolve_bundle_path(target)
    model, info = load_bundle(bundle, backbone_path=backbone_path)
    frame, column = read_input(input_csv, smiles_column)
    kept = kept_columns(list(frame.columns), column, keep_columns, input_csv)
    if column in info.spec.tasks:
        raise CftError(
            f"The bundle's task {column!r} has the same name as the SMILES column of {input_csv}.",
            hint="Rename that column of the input (and pass it with --smiles-column).",
        )
    molecules = featurise_input(frame, column, input_csv)
    valid = molecules.valid
    dev = pick_device(device)
    model.to(dev)
    tasks = list(info.spec.tasks)
    logits = predict_logits(model, molecules.graphs(len(tasks)), batch_size, dev)
    binary = np.array([k == "binary" for k in info.spec.kinds])
    scores = np.where(binary[None, :], 1.0 / (1.0 + np.exp(-logits.astype(np.float64))), logits)
    table = np.full((len(molecules.smiles), len(tasks)), np.nan)
    table[valid] = scores
    replaced = [c for c in kept if c in tasks or c == FLAG_COLUMN]
    result = frame[[c for c in kept if c not in replaced]].copy()
    for j, task in enumerate(tasks):
        result[task] = table[:, j]
    result[FLAG_COLUMN] = (~valid).astype(int)
    atomic_write_with(output, lambda tmp: result.to_csv(tmp, index=False, float_format="%.6g", na_rep=""))
    bad = molecules.invalid_rows()
    return PredictResult(output=output, rows=len(molecules.smiles), invalid=len(bad), tasks=tasks, invalid_rows=bad, kept=kept, replaced=replaced)


def kept_columns(columns: list[str], smiles_column: str, requested: Optional[list[str]], path: Path) -> list[str]:
    """The input columns written beside the scores: every column (default), or the SMILES column
    followed by the `requested` ones (each must exist)."""
    if requested is None:
        return list(columns)
    missing = [c for c in requested if c not in columns]
    if missing:
        raise CftError(
            f"--keep-columns names {', '.join(map(repr, missing))}, which {path} does not have; its columns are: "
            f"{', '.join(columns[:20])}{' ...' if len(columns) > 20 else ''}.",
            hint="Name existing columns, comma-separated (e.g. --keep-columns id,name).",
        )
    return [smiles_column, *[c for c in dict.fromkeys(requested) if c != smiles_column]]
