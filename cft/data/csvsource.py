"""Chemprop-style CSVs: one SMILES column, one column per task, empty cell = missing label."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

from cft.data.select import pick_smiles_column, select
from cft.errors import CftError
from cft.recipe.schema import DataConfig


@dataclass
class Table:
    smiles: list[str]
    tasks: list[str]
    labels: np.ndarray  # [n, T] float32, NaN = missing
    kinds: list[str]
    split_values: Optional[list[object]]  # the split column, when the split is given
    dropped: list[str] = field(default_factory=list)  # task columns without a single label (left out)


def resolve_csv_path(cfg: DataConfig, root: Path) -> Path:
    path = Path(cfg.path).expanduser()
    return path if path.is_absolute() else root / path


def _require_file(path: Path) -> None:
    if not path.exists():
        raise CftError(
            f"Data file {path} does not exist.",
            hint="Check data.path and the data root (--data-root, CFT_DATA_ROOT or data.root).",
        )
    if path.is_dir():
        raise CftError(f"Data path {path} is a folder; data.path must name a CSV file.")


def _unreadable(path: Path, exc: BaseException) -> CftError:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return CftError(f"{path} is not a readable CSV: {first}.", hint="Check the file is a comma-separated CSV (optionally .gz).")


def read_frame(path: Path) -> pd.DataFrame:
    _require_file(path)
    try:
        # everything as text: labels are converted below, so non-numeric cells can be named
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[], low_memory=False)
    except pd.errors.EmptyDataError:
        raise CftError(f"{path} is empty: expected a header row (SMILES, task columns) and data rows.") from None
    except (pd.errors.ParserError, UnicodeDecodeError, OSError, EOFError, ValueError) as exc:
        raise _unreadable(path, exc) from None
    if frame.shape[0] == 0:
        raise CftError(f"{path} has a header but no data rows.")
    read_header(path)  # refuses a repeated name, which pandas renamed above
    return frame


def read_header(path: Path) -> list[str]:
    """The header's column names as written, without reading the rows. A header that repeats a
    name is refused: pandas would rename the copies (`t1`, `t1.1`) and train on both, so the
    names are read without that renaming (header=None)."""
    _require_file(path)
    try:
        raw = pd.read_csv(path, header=None, nrows=1, dtype=str, keep_default_na=False, na_values=[]).iloc[0].tolist()
    except pd.errors.EmptyDataError:
        raise CftError(f"{path} is empty: expected a header row (SMILES, task columns) and data rows.") from None
    except (pd.errors.ParserError, UnicodeDecodeError, OSError, EOFError, ValueError) as exc:
        raise _unreadable(path, exc) from None
    names = [str(name) for name in raw]
    positions: dict[str, list[int]] = {}
    for i, name in enumerate(names):
        positions.setdefault(name.strip(), []).append(i + 1)
    repeated = {name: cols for name, cols in positions.items() if len(cols) > 1}
    if repeated:
        listed = "; ".join(f"{name or '(empty name)'!r} in columns {', '.join(map(str, cols))}" for name, cols in list(repeated.items())[:10])
        first = next(iter(repeated)) or "NAME"
        raise CftError(
            f"{path}: the header repeats {len(repeated)} column name(s): {listed}{' ...' if len(repeated) > 10 else ''}. "
            f"cft will not guess which copy is meant (pandas would silently rename the copies to {first}.1, {first}.2, ... and train on each).",
            hint=f"Rename the repeated columns so that every header name is unique (e.g. {first}_a, {first}_b), or delete the copies you do not want.",
        )
    return names


def read_csv_table(cfg: DataConfig, root: Path, need_labels: bool = True) -> Table:
    """The CSV's SMILES, task columns and labels. `need_labels=False` (self-supervised pretraining,
    which never reads a label) also accepts a file of SMILES alone: a table with no task."""
    path = resolve_csv_path(cfg, root)
    frame = read_frame(path)
    if cfg.limit:
        frame = frame.iloc[: cfg.limit]
    smiles_col = pick_smiles_column(list(frame.columns), cfg.smiles_column, path)
    columns = [c for c in frame.columns if c != smiles_col]
    excluded = {columns[i] for i in select(columns, cfg.exclude_columns)}
    split_col = cfg.split.column if cfg.split.method == "column" else None
    if split_col is not None:
        if split_col not in frame.columns:
            raise CftError(f"{path} has no split column {split_col!r} (data.split.column).")
        excluded.add(split_col)
    if cfg.tasks:
        tasks = [columns[i] for i in select(columns, cfg.tasks, source=str(path)) if columns[i] not in excluded]
    else:
        tasks = [c for c in columns if c not in excluded]
    if not tasks and need_labels:
        raise CftError(f"{path}: no task columns (only {smiles_col!r}).", hint="A CSV needs a SMILES column and at least one label column.")
    columns_values = {task: _numeric_column(frame[task], path, task) for task in tasks}
    dropped = [task for task, values in columns_values.items() if np.isnan(values).all()]
    if dropped and cfg.strict:
        raise CftError(
            f"{path}: {len(dropped)} task column(s) have no label in any row: {', '.join(dropped[:10])}{' ...' if len(dropped) > 10 else ''} "
            "(data.strict: true refuses them).",
            hint="Set data.strict: false to drop them (they are listed in dropped_tasks.json of the run), or leave them out with data.exclude_columns.",
        )
    tasks = [task for task in tasks if task not in dropped]
    if not tasks and need_labels:
        raise CftError(
            f"{path}: every task column ({len(dropped)}) is empty: no labels to train on.",
            hint="Check data.smiles_column and the file: labels are numbers, an empty cell is a missing label.",
        )
    labels = np.empty((len(frame), len(tasks)), dtype=np.float32)
    kinds = []
    for j, task in enumerate(tasks):
        labels[:, j] = columns_values[task]
        kinds.append(_kind(labels[:, j], cfg.task_kinds.get(task) or _TYPE_KIND.get(cfg.task_type), path, task))
    unknown = sorted(set(cfg.task_kinds) - set(tasks) - set(dropped))
    if unknown:
        raise CftError(f"data.task_kinds names tasks that are not selected: {', '.join(unknown)}.")
    return Table(
        smiles=frame[smiles_col].tolist(),
        tasks=tasks,
        labels=labels,
        kinds=kinds,
        split_values=frame[split_col].tolist() if split_col else None,
        dropped=dropped,
    )


def _numeric_column(column: pd.Series, path: Path, task: str) -> np.ndarray:
    text = column.str.strip()
    values = pd.to_numeric(text.where(text != "", None), errors="coerce")
    bad = values.isna() & (text != "") & ~text.str.lower().isin(["nan", "na", "none", "null"])
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise CftError(
            f"{path}, column {task!r}, row {row + 2}: label {column.iloc[row]!r} is not a number "
            f"({int(bad.sum())} such cells in that column).",
            hint="Labels must be numbers (0/1 for binary tasks), empty for missing; or exclude the column with data.exclude_columns.",
        )
    out = values.to_numpy(dtype=np.float32)
    if not np.isfinite(out[~np.isnan(out)]).all():
        raise CftError(f"{path}, column {task!r}: labels must be finite numbers (found inf).")
    return out


_TYPE_KIND = {"classification": "binary", "regression": "regression"}  # data.task_type -> a task's kind


def _kind(values: np.ndarray, override: Optional[str], path: Path, task: str) -> str:
    observed = values[~np.isnan(values)]
    is_binary = bool(np.isin(observed, (0.0, 1.0)).all())
    if override == "binary" and not is_binary:
        raise CftError(
            f"{path}, column {task!r}: data.task_kinds (or data.task_type / --task-type classification) says binary but the labels are not all 0/1.",
            hint="Use regression for this column (data.task_kinds), or fix its labels.",
        )
    return override or ("binary" if is_binary else "regression")
