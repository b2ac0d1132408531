"""Train/valid/test splits: scaffold (Bemis-Murcko via RDKit, as OGB/MoleculeNet do), random, given."""

from __future__ import annotations

import contextlib
import json
from collections import defaultdict
from typing import Sequence

import numpy as np
from rdkit import RDLogger
from rdkit.Chem.Scaffolds import MurckoScaffold

from cft.data.graphs import smiles_key
from cft.errors import CftError
from cft.files.atomic import atomic_write_text
from cft.files.paths import cache_dir

SPLITS = ("train", "valid", "test")


def scaffold_of(smiles: str) -> str:
    try:
        return MurckoScaffold.MurckoScaffoldSmiles(smiles=smiles, includeChirality=True)
    except Exception:  # molecules RDKit parses but cannot build a scaffold for: their own group
        return smiles


def scaffolds(smiles: Sequence[str]) -> list[str]:
    """Scaffold SMILES of every molecule, cached on disk (thousands take seconds to compute)."""
    path = cache_dir() / "scaffolds" / f"{smiles_key(smiles)}.json"
    if path.exists():
        try:
            cached = json.loads(path.read_text())
            if isinstance(cached, list) and len(cached) == len(smiles):
                return [str(s) for s in cached]
        except (OSError, ValueError):
            pass
    RDLogger.DisableLog("rdApp.*")
    out = [scaffold_of(s) for s in smiles]
    with contextlib.suppress(OSError, CftError):
        atomic_write_text(path, json.dumps(out))
    return out


def scaffold_split(smiles: Sequence[str], fractions: Sequence[float]) -> dict[str, np.ndarray]:
    """Deterministic scaffold split (the OGB / Hu et al. 2020 procedure).

    Molecules are grouped by scaffold; groups are visited largest first (ties: the group whose
    first molecule comes later first, as in the reference code) and each goes to train until
    train would exceed its fraction, then to valid, then to test.
    """
    groups: dict[str, list[int]] = defaultdict(list)
    for i, scaffold in enumerate(scaffolds(smiles)):
        groups[scaffold].append(i)
    ordered = sorted(groups.values(), key=lambda g: (len(g), g[0]), reverse=True)
    n = len(smiles)
    train_cut = fractions[0] * n
    valid_cut = (fractions[0] + fractions[1]) * n
    train, valid, test = [], [], []
    for group in ordered:
        if len(train) + len(group) > train_cut:
            if len(train) + len(valid) + len(group) > valid_cut:
                test.extend(group)
            else:
                valid.extend(group)
        else:
            train.extend(group)
    return {k: np.array(sorted(v), dtype=np.int64) for k, v in zip(SPLITS, (train, valid, test))}


def random_split(n: int, fractions: Sequence[float], seed: int) -> dict[str, np.ndarray]:
    order = np.random.default_rng(seed).permutation(n)
    a = int(round(fractions[0] * n))
    b = int(round((fractions[0] + fractions[1]) * n))
    return {k: np.sort(v) for k, v in zip(SPLITS, (order[:a], order[a:b], order[b:]))}


def column_split(values: Sequence[object], source: str, column: str) -> dict[str, np.ndarray]:
    aliases = {"train": "train", "training": "train", "valid": "valid", "val": "valid", "validation": "valid", "test": "test"}
    buckets: dict[str, list[int]] = {k: [] for k in SPLITS}
    for i, value in enumerate(values):
        key = aliases.get(str(value).strip().lower())
        if key is None:
            raise CftError(
                f"{source}, column {column!r}, row {i + 2}: split value {value!r} is not train, valid or test.",
                hint="Fix that cell or choose another split method.",
            )
        buckets[key].append(i)
    return {k: np.array(v, dtype=np.int64) for k, v in buckets.items()}


def check_nonempty(split: dict[str, np.ndarray], source: str) -> None:
    for name in SPLITS:
        if len(split[name]) == 0:
            raise CftError(
                f"{source}: the split leaves {name} empty ({', '.join(f'{k}={len(v)}' for k, v in split.items())} molecules).",
                hint="Use more molecules (data.limit), other data.split.fractions, or another split method.",
            )
