"""Choosing columns by name: task globs (`data.tasks`, `data.exclude_columns`) and the SMILES column.

One definition each, used by every data source (builtin, CSV, OGB) and by `cft predict`.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from pathlib import Path

from cft.errors import CftError

# names (compared case-insensitively) that mark a SMILES column when none is named explicitly
SMILES_NAMES = ("smiles", "smi", "canonical_smiles", "isomeric_smiles", "mol")


def _listing(names: Sequence[str], limit: int = 20) -> str:
    return ", ".join(names[:limit]) + (" ..." if len(names) > limit else "")


def select(names: Sequence[str], patterns: Sequence[str], *, source: str | None = None, field: str = "data.tasks") -> list[int]:
    """Indices of `names` that match the glob `patterns` (`fnmatch`, case-sensitive).

    The result follows the patterns' order (each pattern's matches in the order of `names`),
    without repeats. With `source` set, a pattern that matches nothing is an error naming the
    source, the field and the pattern (a typo in one of several patterns is caught); with
    `source=None` (exclusions) unmatched patterns are ignored.
    """
    chosen: list[int] = []
    for pattern in patterns:
        matched = [i for i, name in enumerate(names) if fnmatch.fnmatchcase(name, pattern)]
        if not matched and source is not None:
            raise CftError(
                f"{source}: {field} entry {pattern!r} matches no column; columns are: {_listing(list(names))}.",
                hint=f"Fix the entry in {field} (names and globs such as 'NR-*' are case-sensitive).",
            )
        chosen.extend(i for i in matched if i not in chosen)
    return chosen


def pick_smiles_column(columns: Sequence[str], requested: str | None, path: Path | str, *, option: str = "data.smiles_column") -> str:
    """The SMILES column of a table.

    Rule: the column named explicitly (`requested`; it must exist), else the first column whose
    name is one of `SMILES_NAMES` compared case-insensitively (`SMILES`, `smiles`, `smi`,
    `canonical_smiles`, `isomeric_smiles`, `mol`), else the first column.
    """
    columns = [str(c) for c in columns]
    if requested is not None:
        if requested not in columns:
            raise CftError(
                f"{path} has no SMILES column {requested!r}; its columns are: {_listing(columns)}.",
                hint=f"Set {option} to one of them.",
            )
        return requested
    for column in columns:
        if column.strip().lower() in SMILES_NAMES:
            return column
    return columns[0]
