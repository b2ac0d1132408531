"""The molecules of a CSV handed to `cft predict` or `cft fingerprint`: its SMILES column, featurised."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from cft.data.csvsource import read_frame
from cft.data.graphs import GraphDataset, GraphStore, featurise
from cft.data.select import pick_smiles_column
from cft.errors import CftError


def read_input(input_csv: Path, smiles_column: str | None) -> tuple[pd.DataFrame, str]:
    """The input table and its SMILES column (`cft.data.select.pick_smiles_column`'s rule)."""
    frame = read_frame(input_csv)
    return frame, pick_smiles_column(list(frame.columns), smiles_column, input_csv, option="--smiles-column")


@dataclass
class InputMolecules:
    smiles: list[str]  # every input row, in order
    store: GraphStore  # the parsable ones
    valid: np.ndarray  # [rows] bool: parsed

    def graphs(self, num_tasks: int) -> GraphDataset:
        """The parsed molecules as a dataset with empty labels [n_valid, num_tasks]."""
        n = int(self.valid.sum())
        return GraphDataset(self.store, torch.zeros(n, num_tasks), np.arange(n))

    def invalid_rows(self) -> list[int]:
        """1-based data rows that did not parse (the header is line 1 of the file: file line = row + 1)."""
        return [int(i) + 1 for i in np.flatnonzero(~self.valid)]


def featurise_input(frame: pd.DataFrame, column: str, input_csv: Path) -> InputMolecules:
    """Featurise the SMILES column; refuse a file in which no row parses (most likely the wrong column)."""
    smiles = [str(s).strip() for s in frame[column].tolist()]
    store, valid, _, _ = featurise(smiles, label=input_csv.name)
    if not valid.any():
        raise CftError(
            f"{input_csv}: no SMILES could be parsed in column {column!r} ({len(smiles)} rows); is it the SMILES column?",
            hint="Pass the SMILES column with --smiles-column.",
        )
    return InputMolecules(smiles, store, valid)
