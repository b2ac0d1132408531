"""`cft fingerprint`: the pooled adapted representation of each molecule (chemprop's `fingerprint`).

One vector of the backbone's width d per molecule and part (a trained bundle has one part, a
composed bundle one per source bundle), in the input's row order. Rows whose SMILES RDKit cannot
parse are NaN and flagged: `valid` is 0 in a CSV, False in the `<name>.valid.npy` mask beside an
.npy. The representation is defined in `cft.nn.model.CftModel.representations`.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cft.apply.molecules import featurise_input, read_input
from cft.errors import CftError
from cft.files.atomic import atomic_paths, atomic_write_text
from cft.files.bundle import load_bundle, resolve_bundle_path
from cft.spec import EVAL_BATCH_SIZE
from cft.training.distributed import pick_device
from cft.training.inference import predict_representations

FORMATS = (".npy", ".csv")


@dataclass
class FingerprintResult:
    output: Path
    mask: Path | None  # the .valid.npy beside an .npy output
    rows: int
    invalid_rows: list[int]  # 1-based data rows
    parts: list[str]
    width: int


def mask_path(output: Path) -> Path:
    return output.with_name(output.name[: -len(".npy")] + ".valid.npy")


def fingerprint_csv(
    target: str | Path,
    input_csv: str | Path,
    output: str | Path,
    *,
    smiles_column: str | None = None,
    backbone_path: str | None = None,
    batch_size: int = EVAL_BATCH_SIZE,
    device: str = "auto",
) -> FingerprintResult:
    input_csv, output = Path(input_csv), Path(output)
    suffix = output.suffix.lower()
    if suffix not in FORMATS:
        raise CftError(f"-o {output}: the output must end in .npy (an array) or .csv (a table).", hint="e.g. -o emb.npy or -o emb.csv")
    if output.resolve() == input_csv.resolve():
        raise CftError(f"-o {output} is the input file; write the fingerprints elsewhere.")
    model, info = load_bundle(resolve_bundle_path(target), backbone_path=backbone_path)
    frame, column = read_input(input_csv, smiles_column)
    molecules = featurise_input(frame, column, input_csv)
    smiles, valid = molecules.smiles, molecules.valid
    dev = pick_device(device)
    model.to(dev)
    reps = predict_representations(model, molecules.graphs(len(info.spec.tasks)), batch_size, dev)
    parts = [p.name for p in info.spec.parts] if reps.shape[1] == len(info.spec.parts) else ["model"]
    table = np.full((len(smiles), *reps.shape[1:]), np.nan, dtype=np.float32)
    table[valid] = reps
    mask = None
    if suffix == ".npy":
        array = table[:, 0] if table.shape[1] == 1 else table  # [N, d], or [N, P, d] for a composed bundle

        def save(tmp: Path, data: np.ndarray) -> None:
            with open(tmp, "wb") as fh:  # a file object: np.save would append .npy to a bare temp name
                np.save(fh, data, allow_pickle=False)

        mask = mask_path(output)
        with atomic_paths(output, mask) as (output_tmp, mask_tmp):  # the array and its mask, both or neither
            save(output_tmp, array)
            save(mask_tmp, valid.astype(bool))
    else:
        width = table.shape[2]
        names = [f"fp_{j}" for j in range(width)] if len(parts) == 1 else [f"{p}:fp_{j}" for p in parts for j in range(width)]
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow([column, "valid", *names])
        for i, row in enumerate(table.reshape(len(smiles), -1)):
            writer.writerow([frame[column].iloc[i], int(valid[i]), *("" if not valid[i] else f"{v:.7g}" for v in row)])
        atomic_write_text(output, buffer.getvalue())
    bad = molecules.invalid_rows()
    return FingerprintResult(output=output, mask=mask, rows=len(smiles), invalid_rows=bad, parts=parts, width=int(table.shape[2]))
