"""Relation-matrix files: .npy (never unpickled) with a `.tasks.json` sidecar of task names, or a
CSV with task names as header and index.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pandas as pd

from cft.errors import CftError
from cft.files.atomic import atomic_paths, atomic_write_json, atomic_write_with
from cft.prior.relation import check_relation


def tasks_sidecar(path: Path) -> Path:
    return path.with_suffix(".tasks.json")


def relation_suffix(path: Path) -> str:
    """`.npy`, `.csv` or `.csv.gz` (and whatever else, for the error message)."""
    return "".join(path.suffixes[-2:]) if path.name.endswith(".gz") else path.suffix


def read_labelled_relation(path: str | Path) -> tuple[np.ndarray, Optional[list[str]]]:
    """(matrix, its task names) from a .npy (names from the `.tasks.json` sidecar, None without
    one) or a labelled .csv (names from the header, which must equal the index)."""
    path = Path(path)
    if not path.exists():
        raise CftError(f"Prior file {path} does not exist.", hint="Check prior.path / --prior; `cft prior build` writes one.")
    suffix = relation_suffix(path)
    if suffix == ".npy":
        return read_npy(path), read_sidecar(path)
    if suffix in (".csv", ".csv.gz"):
        return _read_csv(path)
    raise CftError(f"Prior file {path}: expected .npy or .csv, got {path.suffix or 'no suffix'}.")


def read_relation(path: str | Path, tasks: Sequence[str]) -> np.ndarray:
    """The relation matrix of a file for `tasks`, rows and columns in their order."""
    path = Path(path)
    matrix, names = read_labelled_relation(path)
    if names is not None:
        source = str(path) if relation_suffix(path) != ".npy" else f"{path} (task names from {tasks_sidecar(path).name})"
        matrix = _reorder(matrix, names, tasks, source)
    return check_relation(matrix, len(tasks), str(path))


def read_npy(path: Path) -> np.ndarray:
    """A numeric square array from .npy, memory-mapped first so nothing is read before it is checked.

    ``np.load(mmap_mode="r", allow_pickle=False)`` refuses a file declaring Python objects without
    unpickling anything, and a header whose shape the file cannot hold before any memory is allocated;
    the dtype and shape are then checked on the map and only a valid matrix is copied into memory."""
    try:
        with np.errstate(over="raise"):  # a fuzzed shape whose size overflows int64 is refused, not warned about
            mapped = np.load(path, mmap_mode="r", allow_pickle=False)
    except FloatingPointError:
        raise CftError(f"{path} is not a valid .npy array: its header declares a shape too large for any array.",
                       hint="Save a plain numeric array with np.save(path, array).") from None
    except ValueError as exc:
        text = str(exc)
        if "pickled data" in text:  # no .npy magic: numpy would take the file for a pickle
            raise CftError(f"{path} is not a .npy array (cft never unpickles a file; its data was not read).",
                           hint="Save a plain numeric array with np.save(path, array).") from None
        if "object" in text.lower():  # an object dtype: the array's data would be pickles
            raise CftError(
                f"{path} holds pickled Python objects; cft refuses to unpickle it (its data was not read).",
                hint="Save a plain numeric array with np.save(path, array).",
            ) from None
        if "mmap length" in text or "larger than" in text:
            raise CftError(f"{path} is truncated: its header declares an array larger than the file holds.") from None
        raise CftError(f"{path} is not a valid .npy array ({text[:200] or type(exc).__name__}).", hint="Save a plain numeric array with np.save(path, array).") from None
    except Exception as exc:  # numpy's header parser raises SyntaxError, tokenize.TokenError, EOFError, OSError, ...
        raise CftError(f"{path} is not a valid .npy array ({str(exc)[:200] or type(exc).__name__}).", hint="Save a plain numeric array with np.save(path, array).") from None
    if not isinstance(mapped, np.ndarray):  # an .npz archive or another format np.load also accepts
        raise CftError(f"{path} is not a single .npy array.", hint="Save a plain numeric array with np.save(path, array).")
    dtype, shape = mapped.dtype, mapped.shape
    if dtype.kind not in "fiub" or dtype.fields is not None or dtype.subdtype is not None:
        raise CftError(f"{path}: a relation matrix must hold numbers, not {dtype}.")
    if len(shape) != 2 or shape[0] != shape[1]:
        raise CftError(f"{path}: a relation matrix must be square (T x T), got shape {tuple(shape)}.")
    return np.array(mapped)


def read_sidecar(path: Path) -> Optional[list[str]]:
    side = tasks_sidecar(path)
    if not side.exists():
        return None
    try:
        names = json.loads(side.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CftError(f"{side}: task-name list is not valid JSON ({exc}).") from None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise CftError(f"{side}: expected a JSON list of task names.")
    return names


def _read_csv(path: Path) -> tuple[np.ndarray, list[str]]:
    try:
        frame = pd.read_csv(path, index_col=0)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError, OSError, EOFError) as exc:
        raise CftError(f"{path} is not a readable CSV relation matrix ({str(exc).splitlines()[0] if str(exc) else exc}).") from None
    header = [str(c) for c in frame.columns]
    index = [str(i) for i in frame.index]
    if header != index:
        raise CftError(f"{path}: the header and the index must list the same task names in the same order.")
    try:
        values = frame.to_numpy(dtype=np.float64)
    except (ValueError, TypeError):
        raise CftError(f"{path}: every cell of a relation matrix must be a number.") from None
    return values, header


def _reorder(matrix: np.ndarray, names: Sequence[str], tasks: Sequence[str], source: str) -> np.ndarray:
    if list(names) == list(tasks):
        return matrix
    missing = [t for t in tasks if t not in names]
    extra = [n for n in names if n not in tasks]
    if missing or extra or len(names) != len(tasks):
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}")
        if extra:
            parts.append(f"unexpected {', '.join(extra[:8])}{' ...' if len(extra) > 8 else ''}")
        raise CftError(f"{source}: its task names do not match the model's tasks ({'; '.join(parts) or 'duplicates'}).")
    a = np.asarray(matrix)
    if a.ndim != 2 or a.shape != (len(names), len(names)):
        raise CftError(f"{source}: shape {a.shape} does not match its {len(names)} task names.")
    order = [list(names).index(t) for t in tasks]
    return a[np.ix_(order, order)]


def write_relation(path: str | Path, matrix: np.ndarray, tasks: Sequence[str]) -> None:
    """Write .npy (plus a .tasks.json sidecar) or a labelled .csv, atomically."""
    path = Path(path)
    matrix = check_relation(matrix, len(tasks), str(path))
    if path.suffix == ".csv":
        frame = pd.DataFrame(matrix, index=list(tasks), columns=list(tasks))
        atomic_write_with(path, lambda tmp: frame.to_csv(tmp))
        return
    if path.suffix != ".npy":
        raise CftError(f"{path}: write a relation matrix as .npy or .csv.")

    def save(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            np.save(fh, matrix, allow_pickle=False)

    with atomic_paths(path, tasks_sidecar(path)) as (matrix_tmp, names_tmp):  # both files or neither
        save(matrix_tmp)
        atomic_write_json(names_tmp, list(tasks))
