"""`cft predict`: SMILES in, one score per task out (probabilities for binary tasks).

Rows keep the input's order. SMILES that RDKit cannot parse get empty scores and
`invalid_smiles = 1`; the caller reports how many there were.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd
import torch

from cft.errors import CftError

FLAG_COLUMN = "invalid_smiles"


@dataclass
class PredictResult:
    output: Path
    rows: int
    invalid: int
    tasks: list[str]
    invalid_rows: list[int]  # 1-based data rows (the header is row 1 of the file, so file line = row + 1)


def predict_csv(
    target: str | Path,
    input_csv: str | Path,
    output: str | Path,
    *,
    smiles_column: Optional[str] = None,
    backbone_path: Optional[str] = None,
    batch_size: int = 256,
    device: str = "auto",
) -> PredictResult:
    from cft.data.csvsource import read_frame
    from cft.data.graphs import GraphDataset, featurise
    from cft.data.select import pick_smiles_column
    from cft.files.bundle import load_bundle, resolve_bundle_path
    from cft.training.distributed import pick_device
    from cft.training.inference import predict_logits

    input_csv, output = Path(input_csv), Path(output)
    if output.resolve() == input_csv.resolve():
        raise CftError(f"-o {output} is the input file; write the predictions elsewhere.")
    bundle = resolve_bundle_path(target)
    model, info = load_bundle(bundle, backbone_path=backbone_path)
    frame = read_frame(input_csv)
    column = pick_smiles_column(list(frame.columns), smiles_column, input_csv, option="--smiles-column")
    smiles = [str(s).strip() for s in frame[column].tolist()]
    store, valid, _, _ = featurise(smiles, label=input_csv.name)
    if not valid.any():
        raise CftError(
            f"{input_csv}: no SMILES could be parsed in column {column!r} ({len(smiles)} rows); is it the SMILES column?",
            hint="Pass the SMILES column with --smiles-column.",
        )
    dev = pick_device(device)
    model.to(dev)
    tasks = list(info.spec.tasks)
    n_valid = int(valid.sum())
    dataset = GraphDataset(store, torch.zeros(n_valid, len(tasks)), np.arange(n_valid))
    logits = predict_logits(model, dataset, batch_size, dev)
    binary = np.array([k == "binary" for k in info.spec.kinds])
    scores = np.where(binary[None, :], 1.0 / (1.0 + np.exp(-logits.astype(np.float64))), logits)
    table = np.full((len(smiles), len(tasks)), np.nan)
    table[valid] = scores
    result = pd.DataFrame({column: frame[column].tolist()})
    clash = [t for t in tasks if t == column or t == FLAG_COLUMN]
    if clash:
        raise CftError(f"The bundle's task {clash[0]!r} has the same name as an output column; rename the input's column.")
    for j, task in enumerate(tasks):
        result[task] = table[:, j]
    result[FLAG_COLUMN] = (~valid).astype(int)

    from cft.files.atomic import atomic_write_with

    atomic_write_with(output, lambda tmp: result.to_csv(tmp, index=False, float_format="%.6g", na_rep=""))
    bad = [int(i) + 1 for i in np.flatnonzero(~valid)]
    return PredictResult(output=output, rows=len(smiles), invalid=len(bad), tasks=tasks, invalid_rows=bad)
