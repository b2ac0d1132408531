"""Train/valid/test splits: scaffold (Bemis-Murcko via RDKit, as OGB/MoleculeNet do), seeded balanced
scaffold (as chemprop's `scaffold_balanced`), random, given."""

from __future__ import annotations

import contextlib
import json
from collections import defaultdict
from pathlib import Path
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


def scaffold_groups(smiles: Sequence[str]) -> list[list[int]]:
    """The molecules' indices grouped by Bemis-Murcko scaffold, groups in order of first appearance."""
    groups: dict[str, list[int]] = defaultdict(list)
    for i, scaffold in enumerate(scaffolds(smiles)):
        groups[scaffold].append(i)
    return list(groups.values())


def scaffold_split(smiles: Sequence[str], fractions: Sequence[float]) -> dict[str, np.ndarray]:
    """Deterministic scaffold split (the OGB / Hu et al. 2020 procedure).

    Molecules are grouped by scaffold; groups are visited largest first (ties: the group whose
    first molecule comes later first, as in the reference code) and each goes to train until
    train would exceed its fraction, then to valid, then to test.
    """
    ordered = sorted(scaffold_groups(smiles), key=lambda g: (len(g), g[0]), reverse=True)
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


def balanced_scaffold_split(smiles: Sequence[str], fractions: Sequence[float], seed: int) -> dict[str, np.ndarray]:
    """Seeded scaffold split: another scaffold split per seed, with the same guarantee (no scaffold
    in two splits), for repeating an evaluation over several scaffold splits.

    Molecules are grouped by Bemis-Murcko scaffold. Groups larger than half the valid or the test
    size ("big") are visited first, then the others, each kind in a random order drawn from
    `seed`; a group goes to train if it fits in train's share n * f_train, else to valid if it
    fits in n * f_valid, else to test (with f_test = 0: to the last split with a share). Visiting
    the big groups first keeps them out of valid and test, which they would otherwise fill alone
    (the balancing of chemprop's `scaffold_balanced`).
    """
    groups = scaffold_groups(smiles)
    n = len(smiles)
    sizes = [f * n for f in fractions]
    big_limit = min(sizes[1], sizes[2]) / 2
    rng = np.random.default_rng(seed)
    big = [g for g in groups if len(g) > big_limit]
    small = [g for g in groups if len(g) <= big_limit]
    ordered = [big[i] for i in rng.permutation(len(big))] + [small[i] for i in rng.permutation(len(small))]
    parts: list[list[int]] = [[], [], []]
    # a group that fits nowhere goes to the last split with a share (test, unless its fraction is 0)
    last = max(i for i, f in enumerate(fractions) if f > 0)
    for group in ordered:
        fits = [i for i in range(3) if len(parts[i]) + len(group) <= sizes[i]]
        parts[fits[0] if fits else last].extend(group)
    return {k: np.array(sorted(v), dtype=np.int64) for k, v in zip(SPLITS, parts)}


def random_split(n: int, fractions: Sequence[float], seed: int) -> dict[str, np.ndarray]:
    order = np.random.default_rng(seed).permutation(n)
    a = int(round(fractions[0] * n))
    b = int(round((fractions[0] + fractions[1]) * n))
    return {k: np.sort(v) for k, v in zip(SPLITS, (order[:a], order[a:b], order[b:]))}


def column_split(values: Sequence[object], source: str, column: str, rows: Sequence[int] | None = None) -> dict[str, np.ndarray]:
    """Split by a column's values (train, valid/val/validation, test). `rows[i]`: the input data
    row of value i (0-based), for messages: without it, value i is data row i."""
    aliases = {"train": "train", "training": "train", "valid": "valid", "val": "valid", "validation": "valid", "test": "test"}
    buckets: dict[str, list[int]] = {k: [] for k in SPLITS}
    for i, value in enumerate(values):
        key = aliases.get(str(value).strip().lower())
        if key is None:
            raise CftError(
                f"{source}, column {column!r}, row {(int(rows[i]) if rows is not None else i) + 2}: split value {value!r} is not train, valid or test.",
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


# ------------------------------------------------------------------ chemprop's split files

CHEMPROP_KEYS = {"train": "train", "val": "valid", "test": "test"}  # chemprop's key -> cft's split name


def _parse_indices(value: object, path: str, key: str) -> list[int]:
    """chemprop's index lists: a list of ints, or a string of ints and ranges ('0-2,4' = 0, 1, 2, 4)."""
    if isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return list(value)
    if isinstance(value, str):
        out: list[int] = []
        for part in (p.strip() for p in value.split(",")):
            if not part:
                continue
            lo, sep, hi = part.partition("-")
            try:
                out.extend(range(int(lo), int(hi) + 1) if sep else [int(lo)])
            except ValueError:
                raise CftError(f"{path}, key {key!r}: {part!r} is not a row index or a range like '0-2'.") from None
        return out
    raise CftError(
        f"{path}, key {key!r}: expected a list of row indices (integers) or a string like '0-2,4', got {type(value).__name__}.",
        hint="Write the split as chemprop does: [{\"train\": [0, 1, ...], \"val\": [...], \"test\": [...]}].",
    )


def read_splits_file(path: Path, n_rows: int) -> dict[str, np.ndarray]:
    """A chemprop `splits.json` (`--splits-file`): a JSON list holding one object with the keys
    `train`, `val` and `test`, each a list of 0-based data-row indices of the input CSV (the
    header is not a row). Returns cft's split names -> sorted row indices. Refused, naming the
    file and the key: a missing key, an index outside 0..n_rows-1, a row in two splits, more
    than one split in the list."""
    where = str(path)
    if not path.is_file():
        raise CftError(f"Split file {path} does not exist (data.split.path).", hint="Relative paths are read from the data root, like data.path.")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise CftError(f"{where} is not readable JSON ({str(exc)[:120]}).", hint="data.split.path must name a chemprop splits.json.") from None
    if isinstance(raw, dict):
        raw = [raw]
    if not isinstance(raw, list) or not raw or not all(isinstance(d, dict) for d in raw):
        raise CftError(f"{where}: expected a JSON list of objects with the keys train, val and test (chemprop's --splits-file format).")
    if len(raw) > 1:
        raise CftError(
            f"{where} holds {len(raw)} splits (folds); cft trains one split per run.",
            hint="Write each fold to its own file (a list with one object) and train one run per file.",
        )
    entry = raw[0]
    out: dict[str, np.ndarray] = {}
    seen: dict[int, str] = {}
    for key, name in CHEMPROP_KEYS.items():
        if key not in entry:
            raise CftError(
                f"{where}: key {key!r} is missing (it has {', '.join(map(repr, entry)) or 'no keys'}).",
                hint="chemprop's split files have the keys 'train', 'val' and 'test'.",
            )
        indices = _parse_indices(entry[key], where, key)
        bad = [i for i in indices if not 0 <= i < n_rows]
        if bad:
            raise CftError(
                f"{where}, key {key!r}: row index {bad[0]} is outside the input's {n_rows} data rows (0..{n_rows - 1}; {len(bad)} such indices).",
                hint="The indices count the data rows of the CSV from 0 (the header is not a row); was the file made for another CSV?",
            )
        for i in indices:
            if i in seen and seen[i] != key:
                raise CftError(f"{where}: row {i} is in both {seen[i]!r} and {key!r}; a molecule belongs to one split.")
            seen[i] = key
        out[name] = np.unique(np.asarray(indices, dtype=np.int64))
    return out


def rows_to_split(row_split: dict[str, np.ndarray], rows: np.ndarray) -> dict[str, np.ndarray]:
    """Map a split over input rows onto the kept molecules (`rows[k]` is molecule k's input row);
    rows that were skipped (unparsable SMILES) or that no list names are in no split."""
    position = {int(r): k for k, r in enumerate(rows)}
    return {name: np.array(sorted(position[int(r)] for r in row_split[name] if int(r) in position), dtype=np.int64) for name in SPLITS}


def chemprop_splits(split: dict[str, np.ndarray], rows: np.ndarray) -> list[dict[str, list[int]]]:
    """The split in chemprop's `--splits-file` format: one object, input-row indices per key."""
    return [{key: sorted(int(rows[k]) for k in split[name]) for key, name in CHEMPROP_KEYS.items()}]
