"""The structural prior: a relation matrix A over tasks and its GCN normalisation.

A is symmetric and non-negative; its diagonal is ignored (cft writes 1 there; the
normalisation adds the self-loops). Sources: training labels (|phi|, Jaccard or cosine over co-labelled molecules,
with a minimum support, sparsified), a file (.npy read with allow_pickle=False, or a CSV
with task names as header and index), or the identity (no structure). The normalised matrix
is A_hat = D^-1/2 (A + I) D^-1/2, computed with torch-geometric's `gcn_norm`; it stays
differentiable in A so a `learned` prior can be trained.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pandas as pd
import torch
from torch_geometric.nn.conv.gcn_conv import gcn_norm
from torch_geometric.utils import dense_to_sparse, to_dense_adj

from cft.errors import CftError
from cft.fsutil import atomic_paths, atomic_write_json, atomic_write_with

METHODS = ("phi", "jaccard", "cosine")


# --------------------------------------------------------------------------- from labels


def relation_from_labels(
    labels: np.ndarray,
    method: str = "phi",
    min_support: int = 20,
    min_value: float = 0.0,
    top_k: Optional[int] = None,
) -> np.ndarray:
    """Task relation from a [n, T] label matrix (NaN = missing), over co-labelled molecules.

    `phi` is |Pearson| of the labels (for 0/1 labels this is the phi coefficient; for
    regression tasks it is |r|), `jaccard` is |both positive| / |either positive|, `cosine`
    is the cosine of the label vectors. Pairs with fewer than `min_support` co-labelled
    molecules, or weaker than `min_value`, get no edge; `top_k` keeps each task's k strongest.
    """
    if method not in METHODS:
        raise CftError(f"unknown prior method {method!r}; choose one of {', '.join(METHODS)}.")
    y = np.asarray(labels, dtype=np.float64)
    mask = (~np.isnan(y)).astype(np.float64)
    y0 = np.nan_to_num(y, nan=0.0)
    support = mask.T @ mask
    with np.errstate(divide="ignore", invalid="ignore"):
        if method == "phi":
            n = np.maximum(support, 1.0)
            sx = y0.T @ mask  # [t, u]: sum of y_t over molecules labelled for both
            sxx = (y0 * y0).T @ mask
            sxy = y0.T @ y0
            cov = sxy - sx * sx.T / n
            var_x, var_y = sxx - sx * sx / n, (sxx - sx * sx / n).T
            rel = np.abs(cov / np.sqrt(var_x * var_y))
        elif method == "jaccard":
            pos = (y0 > 0.5).astype(np.float64) * mask
            both = pos.T @ pos
            either = pos.T @ mask + (pos.T @ mask).T - both
            rel = both / either
        else:
            sxy = y0.T @ y0
            sxx = (y0 * y0).T @ mask
            rel = np.abs(sxy / np.sqrt(sxx * sxx.T))
    rel = np.nan_to_num(rel, nan=0.0, posinf=0.0, neginf=0.0)
    rel[support < min_support] = 0.0
    rel[rel < min_value] = 0.0
    np.fill_diagonal(rel, 0.0)
    if top_k is not None and top_k < rel.shape[0] - 1:
        keep = np.zeros_like(rel, dtype=bool)
        order = np.argsort(-rel, axis=1, kind="stable")[:, :top_k]
        np.put_along_axis(keep, order, True, axis=1)
        rel = np.where(keep | keep.T, rel, 0.0)
    rel = np.maximum(rel, rel.T)  # exact symmetry
    np.fill_diagonal(rel, 1.0)  # self-relation, for display; the normalisation ignores it
    return rel.astype(np.float32)


# --------------------------------------------------------------------------- validation and files


def check_relation(matrix: np.ndarray, num_tasks: int, source: str) -> np.ndarray:
    """Refuse a relation matrix of the wrong shape, with NaN/inf, negative or asymmetric."""
    a = np.asarray(matrix)
    if a.dtype.kind not in "fiub":
        raise CftError(f"{source}: a relation matrix must hold numbers, not {a.dtype}.")
    a = a.astype(np.float64)
    if a.ndim != 2 or a.shape[0] != a.shape[1]:
        raise CftError(f"{source}: a relation matrix must be square (T x T), got shape {a.shape}.")
    if a.shape[0] != num_tasks:
        raise CftError(f"{source}: the relation matrix is {a.shape[0]}x{a.shape[1]} but there are {num_tasks} tasks.", hint="Build it over the same tasks, in the same order.")
    if not np.isfinite(a).all():
        bad = np.argwhere(~np.isfinite(a))[0]
        raise CftError(f"{source}: the relation matrix has NaN or inf (first at row {bad[0]}, column {bad[1]}).")
    if (a < 0).any():
        bad = np.argwhere(a < 0)[0]
        raise CftError(f"{source}: the relation matrix has negative entries (first at row {bad[0]}, column {bad[1]}: {a[bad[0], bad[1]]:g}).", hint="Use absolute correlations.")
    if not np.allclose(a, a.T, atol=1e-6, rtol=1e-5):
        diff = np.abs(a - a.T)
        i, j = np.unravel_index(np.argmax(diff), diff.shape)
        raise CftError(f"{source}: the relation matrix is not symmetric (A[{i},{j}]={a[i, j]:g} but A[{j},{i}]={a[j, i]:g}).", hint="Symmetrise it, e.g. (A + A.T) / 2.")
    return a.astype(np.float32)


def tasks_sidecar(path: Path) -> Path:
    return path.with_suffix(".tasks.json")


def _relation_suffix(path: Path) -> str:
    """`.npy`, `.csv` or `.csv.gz` (and whatever else, for the error message)."""
    return "".join(path.suffixes[-2:]) if path.name.endswith(".gz") else path.suffix


def read_relation(path: str | Path, tasks: Sequence[str]) -> np.ndarray:
    """Read a relation matrix for `tasks` from .npy (never unpickled) or labelled .csv."""
    path = Path(path)
    if not path.exists():
        raise CftError(f"Prior file {path} does not exist.", hint="Check prior.path / --prior; `cft prior build` writes one.")
    suffix = _relation_suffix(path)
    if suffix == ".npy":
        matrix = _read_npy(path)
        names = _read_sidecar(path)
        if names is not None:
            matrix = _reorder(matrix, names, tasks, f"{path} (task names from {tasks_sidecar(path).name})")
    elif suffix in (".csv", ".csv.gz"):
        matrix = _read_csv(path, tasks)
    else:
        raise CftError(f"Prior file {path}: expected .npy or .csv, got {path.suffix or 'no suffix'}.")
    return check_relation(matrix, len(tasks), str(path))


def _read_npy(path: Path) -> np.ndarray:
    """A numeric 2-D array from .npy. The header is checked first: a file declaring Python
    objects is refused without reading its data (so nothing in it is ever unpickled), and a
    header whose shape the file cannot hold is refused before any memory is allocated."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            if version == (1, 0):
                shape, _fortran, dtype = np.lib.format.read_array_header_1_0(fh)
            elif version == (2, 0):
                shape, _fortran, dtype = np.lib.format.read_array_header_2_0(fh)
            else:
                raise ValueError(f"unsupported .npy format version {version}")
            offset = fh.tell()
    except Exception as exc:  # numpy's header parser raises ValueError, SyntaxError, tokenize.TokenError, ...
        raise CftError(f"{path} is not a valid .npy array ({str(exc)[:200] or type(exc).__name__}).", hint="Save a plain numeric array with np.save(path, array).") from None
    if dtype.hasobject:
        raise CftError(
            f"{path} holds pickled Python objects; cft refuses to unpickle it (its data was not read).",
            hint="Save a plain numeric array with np.save(path, array).",
        )
    if dtype.kind not in "fiub" or dtype.fields is not None or dtype.subdtype is not None:
        raise CftError(f"{path}: a relation matrix must hold numbers, not {dtype}.")
    if len(shape) != 2 or shape[0] != shape[1]:
        raise CftError(f"{path}: a relation matrix must be square (T x T), got shape {tuple(shape)}.")
    if shape[0] * shape[1] * dtype.itemsize > size - offset:
        raise CftError(f"{path} is truncated: its header declares a {shape[0]}x{shape[1]} {dtype} array, more than the file holds.")
    try:
        with open(path, "rb") as fh:
            return np.load(fh, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise CftError(f"{path} is not a valid .npy array ({str(exc)[:200]}).") from None


def _read_sidecar(path: Path) -> Optional[list[str]]:
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


def _read_csv(path: Path, tasks: Sequence[str]) -> np.ndarray:
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
    return _reorder(values, header, tasks, str(path))


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


# --------------------------------------------------------------------------- normalisation


def normalized_adjacency(relation: torch.Tensor) -> torch.Tensor:
    """A_hat = D^-1/2 (A + I) D^-1/2 as a dense [T, T] tensor, differentiable in A."""
    t = relation.size(0)
    off_diagonal = relation * (1.0 - torch.eye(t, dtype=relation.dtype, device=relation.device))
    edge_index, weight = dense_to_sparse(off_diagonal)
    edge_index, weight = gcn_norm(edge_index, weight, num_nodes=t, add_self_loops=True)
    return to_dense_adj(edge_index, edge_attr=weight, max_num_nodes=t)[0]


class NormalizedAdjacencyCache:
    """A_hat of a constant relation matrix, computed once (not at every training step).

    The entry is keyed by the tensor's storage and version counter, so loading new values
    into the buffer (load_state_dict copies in place) or moving it to another device
    recomputes it. Learned priors change every step and are not cached."""

    def __init__(self):
        self._key = None
        self._value: torch.Tensor | None = None

    def __call__(self, relation: torch.Tensor) -> torch.Tensor:
        if relation.requires_grad:
            return normalized_adjacency(relation)
        key = (relation.data_ptr(), relation._version, relation.device, relation.dtype, tuple(relation.shape))
        if key != self._key or self._value is None:
            with torch.no_grad():
                self._value = normalized_adjacency(relation)
            self._key = key
        return self._value


def identity_relation(num_tasks: int) -> np.ndarray:
    """No structure: each task related only to itself (A_hat = I)."""
    return np.eye(num_tasks, dtype=np.float32)


# --------------------------------------------------------------------------- from datasets and bundles


def _data_config(data: Optional[str], tasks: Optional[Sequence[str]], base: Optional[dict], patterns: Optional[Sequence[str]] = None):
    """A DataConfig for `data`: a CSV path (split settings from `base`, a bundle's recorded data
    config, when given) or a recipe YAML (its data section)."""
    from cft.recipe import DataConfig, load_recipe

    if data is None:  # the data a bundle recorded, as it recorded it
        cfg = dict(base or {})
    elif data.endswith((".yaml", ".yml")):
        cfg = load_recipe(data).data.model_dump(mode="json")
    else:
        cfg = {k: v for k, v in (base or {}).items() if k != "tasks"}
        cfg.update({"source": "csv", "path": data, "name": None})
    if tasks is not None:
        cfg["tasks"] = list(tasks)
    elif patterns:
        cfg["tasks"] = list(patterns)
    try:
        return DataConfig.model_validate(cfg)
    except Exception as exc:  # pydantic ValidationError: recorded settings this cft cannot read
        raise CftError(f"{data}: cannot build data settings for it ({str(exc)[:200]}).") from None


def _check_columns(cfg, root: Path, tasks: Sequence[str]) -> None:
    """Name every task the CSV lacks (before featurising anything)."""
    if cfg.source != "csv":
        return
    from cft.data.csvsource import resolve_csv_path

    path = resolve_csv_path(cfg, root)
    if not path.exists():
        raise CftError(f"Data file {path} does not exist.", hint="Check the path and --data-root.")
    try:
        header = [str(c) for c in pd.read_csv(path, nrows=0).columns]
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError, OSError, EOFError) as exc:
        raise CftError(f"{path} is not a readable CSV ({str(exc).splitlines()[0] if str(exc) else exc}).") from None
    missing = [t for t in tasks if t not in header]
    if missing:
        raise CftError(
            f"{path} has no label column for task(s) {', '.join(missing[:10])}{' ...' if len(missing) > 10 else ''}; "
            "a prior from data needs labels for every task.",
            hint="Use a dataset that covers all the tasks, or --prior FILE.",
        )


def relation_from_dataset(
    data: Optional[str],
    tasks: Optional[Sequence[str]],
    data_root: Path,
    *,
    base: Optional[dict] = None,
    seed: int = 0,
    method: str = "phi",
    min_support: int = 20,
    min_value: float = 0.1,
    top_k: Optional[int] = None,
    patterns: Optional[Sequence[str]] = None,
) -> tuple[np.ndarray, dict]:
    """Relation over `tasks` (exact names, in order; default: the data's tasks, or those matching
    `patterns`) from the labels of the training split."""
    from cft.data import load_dataset

    cfg = _data_config(data, tasks, base, patterns)
    if tasks is not None:
        _check_columns(cfg, data_root, tasks)
    dataset = load_dataset(cfg, data_root, seed)
    labels = dataset.labels("train")
    names = list(dataset.tasks)
    if tasks is not None:
        missing = [t for t in tasks if t not in names]
        if missing:
            raise CftError(f"{data or cfg.source}: no labels for task(s) {', '.join(missing[:8])}.", hint="Use data that covers every task.")
        labels = labels[:, [names.index(t) for t in tasks]]  # the caller's task order
        names = list(tasks)
    matrix = relation_from_labels(labels, method, min_support, min_value, top_k)
    details = {
        "data": str(data) if data else (cfg.path or cfg.name or cfg.source), "tasks": names, "split": cfg.split.method, "train_molecules": int(labels.shape[0]),
        "method": method, "min_support": min_support, "min_value": min_value, "top_k": top_k,
    }
    return matrix, details


def relation_for_bundles(
    bundles: Sequence[str | Path],
    data_root: Path,
    data: Optional[str] = None,
    **settings,
) -> tuple[np.ndarray, list[str], dict]:
    """Relation over the union of the bundles' tasks, in bundle order, from training labels of
    `data` or, by default, of the data the bundles record (which must be one dataset)."""
    from cft.bundle import bundle_label, read_bundle_info, resolve_bundle_path

    infos = [read_bundle_info(resolve_bundle_path(b)) for b in bundles]
    tasks = [t for i in infos for t in i.spec.tasks]
    groups, start = [], 0
    for i in infos:
        groups.append((bundle_label(i.path), start, start + len(i.spec.tasks)))
        start += len(i.spec.tasks)
    dupes = sorted({t for t in tasks if tasks.count(t) > 1})
    if dupes:
        raise CftError(f"The bundles share task names ({', '.join(dupes[:8])}); a relation matrix needs one row per task.")
    base = infos[0].data.get("config")
    if data is None:
        strip = lambda c: {k: v for k, v in (c or {}).items() if k != "tasks"}  # noqa: E731
        if not base or any(strip(i.data.get("config")) != strip(base) for i in infos):
            raise CftError(
                "The bundles do not record one common dataset to take labels from.",
                hint="Pass --data CSV holding every task's labels.",
            )
    matrix, details = relation_from_dataset(data, tasks, data_root, base=base, seed=int(infos[0].provenance.get("seed", 0)), **settings)
    details["groups"] = groups if len(groups) > 1 else []
    return matrix, tasks, details


def relation_of_target(target: str | Path) -> tuple[np.ndarray, list[str], str, list[tuple[str, int, int]]]:
    """(matrix, task names, description, task groups) of a relation file (.npy/.csv), a run folder
    or a bundle; the groups are a composed bundle's parts (name, first task, end), else empty."""
    path = Path(target)
    if path.is_dir() or path.suffix == ".safetensors":
        from cft.bundle import load_bundle_shell, resolve_bundle_path

        bundle = resolve_bundle_path(path)
        model, info = load_bundle_shell(bundle)
        matrix = model.router.union_relation().detach().cpu().numpy()
        kind = "learned prior" if any(p.learned_prior for p in info.spec.parts) and len(info.spec.parts) == 1 else "prior"
        router = model.router
        groups = [(p.name, router.task_offsets[g], router.task_offsets[g + 1]) for g, p in enumerate(router.part_specs)]
        return matrix, list(info.spec.tasks), f"{kind} of {bundle}", groups if len(groups) > 1 else []
    if not path.exists():
        raise CftError(f"{path} does not exist.", hint="Pass a .npy/.csv relation matrix, a run folder or a bundle.")
    suffix = _relation_suffix(path)
    if suffix == ".npy":
        matrix = _read_npy(path)
        names = _read_sidecar(path)
        size = matrix.shape[0] if matrix.ndim >= 1 else 0
        names = names if names is not None else [f"task{i}" for i in range(size)]
        if matrix.ndim == 2 and len(names) != matrix.shape[0]:
            raise CftError(f"{path}: {len(names)} task names in {tasks_sidecar(path).name} for a {matrix.shape[0]}-row matrix.")
        return check_relation(matrix, len(names), str(path)), names, str(path), []
    if suffix in (".csv", ".csv.gz"):
        try:
            header = [str(c) for c in pd.read_csv(path, index_col=0, nrows=0).columns]
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError, OSError, EOFError) as exc:
            raise CftError(f"{path} is not a readable CSV relation matrix ({exc}).") from None
        return read_relation(path, header), header, str(path), []
    raise CftError(f"{path}: expected a .npy or .csv relation matrix, a run folder or a bundle .safetensors.")


# --------------------------------------------------------------------------- display


def _cluster_blocks(matrix: np.ndarray, names: Sequence[str], max_rows: int):
    """Order (and, past max_rows, cluster) tasks by their relation rows."""
    from cft.heatmap import cluster_rows

    order, cluster = cluster_rows(matrix, max_rows)
    if len(set(cluster.tolist())) == len(names):
        return order, [[int(i)] for i in order]
    members = [[int(i) for i in order if cluster[i] == c] for c in range(int(cluster.max()) + 1)]
    return order, members


def prior_terminal(
    matrix: np.ndarray, names: Sequence[str], description: str, width: int, max_rows: int = 40, groups: Sequence[tuple[str, int, int]] = ()
) -> list:
    """Terminal heatmap of a relation matrix; more than `max_rows` tasks are clustered into blocks."""
    from rich.text import Text

    from cft.heatmap import Heat, render_heat, summarise_columns

    a = np.asarray(matrix, dtype=np.float64)
    t = len(names)
    off = a - np.diag(np.diag(a))
    edges = int((off > 0).sum() // 2)
    lines = [Text(f"{description}: {t} tasks, {edges} of {t * (t - 1) // 2} pairs linked, strongest link {off.max(initial=0):.3f}", style="bold")]
    vmax = float(off.max(initial=0)) or 1.0
    if t > max_rows:
        _, members = _cluster_blocks(off, names, max_rows)
        values = np.array([[off[np.ix_(m, n)].mean() for n in members] for m in members])
        labels = [names[m[0]] if len(m) == 1 else f"{names[m[0]]} +{len(m) - 1}" for m in members]
        cols = [str(i + 1) for i in range(len(members))]
        lines.append(Text(
            f"{t} tasks do not fit: shown as {len(members)} clusters of tasks with similar relations (hierarchical clustering); "
            "a cell is the mean link between two clusters; rows and columns are numbered alike.", style="yellow"))
        w = len(str(len(labels)))
        heat = Heat(values, [f"{i + 1:>{w}} {lab}" for i, lab in enumerate(labels)], cols, vmax=vmax, col_reduce="mean")
    else:
        w = len(str(t))
        heat = Heat(off, [f"{i + 1:>{w}} {n}" for i, n in enumerate(names)], [str(i + 1) for i in range(t)], list(groups), list(groups), vmax=vmax, col_reduce="mean")
    lines.append(Text(f"cells: link / strongest link x 100 (· = none); the diagonal (self) is left blank; columns numbered as rows", style="dim"))
    heat, note = summarise_columns(heat, width)
    if note:
        lines.append(Text(note, style="yellow"))
    lines.extend(render_heat(heat))
    return lines


def prior_png(
    matrix: np.ndarray, names: Sequence[str], description: str, path: str | Path, max_labels: int = 60, groups: Sequence[tuple[str, int, int]] = ()
) -> None:
    from cft.heatmap import Panel, save_png

    a = np.asarray(matrix, dtype=np.float64)
    off = a - np.diag(np.diag(a))
    t = len(names)
    vmax = float(off.max(initial=0)) or 1.0
    if t > max_labels:
        order, members = _cluster_blocks(off, names, max_labels)
        ordered = off[np.ix_(order, order)]
        ticks, pos = [], 0
        for m in members:
            ticks.append((pos + (len(m) - 1) / 2, names[m[0]] if len(m) == 1 else f"{names[m[0]]} +{len(m) - 1}"))
            pos += len(m)
        panel = Panel(ordered, f"{t} tasks, ordered by hierarchical clustering; ticks mark {len(members)} clusters", None, [], row_ticks=ticks, vmax=vmax, colorbar_label="relation")
    else:
        panel = Panel(off, f"{t} tasks (diagonal left at 0)", list(names), list(names), list(groups), list(groups), vmax=vmax, colorbar_label="relation")
    save_png(path, [panel], title=f"task relation matrix: {description}")
