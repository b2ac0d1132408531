"""Where a relation matrix comes from: a recipe's prior section, a dataset's training labels, the
data recorded in bundles, or an existing file, run folder or bundle.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from pydantic import ValidationError

from cft.data.csvsource import read_header, resolve_csv_path
from cft.data.dataset import MolDataset, load_dataset
from cft.errors import CftError
from cft.files.bundle import bundle_label, load_bundle_shell, read_bundle_info, resolve_bundle_path
from cft.prior.files import read_labelled_relation, read_relation, relation_suffix, tasks_sidecar
from cft.prior.relation import check_relation, identity_relation, relation_from_labels
from cft.recipe.load import load_recipe
from cft.recipe.schema import DataConfig, PriorConfig


def build_relation(cfg: PriorConfig, dataset: MolDataset) -> np.ndarray:
    """The prior over the dataset's tasks; `labels` uses the training split only."""
    source = cfg.init if cfg.source == "learned" else cfg.source
    if source == "identity":
        return identity_relation(len(dataset.tasks))
    if source == "file":
        return read_relation(cfg.path or "", dataset.tasks)
    return relation_from_labels(dataset.labels("train"), cfg.method, cfg.min_support, cfg.min_value, cfg.top_k)


def _data_config(data: Optional[str], tasks: Optional[Sequence[str]], base: Optional[dict], patterns: Optional[Sequence[str]] = None):
    """A DataConfig for `data`: a CSV path (split settings from `base`, a bundle's recorded data
    config, when given) or a recipe YAML (its data section)."""
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
    except ValidationError as exc:  # recorded settings this cft cannot read
        raise CftError(f"{data}: cannot build data settings for it ({str(exc)[:200]}).") from None


def _check_columns(cfg, root: Path, tasks: Sequence[str]) -> None:
    """Name every task the CSV lacks (before featurising anything)."""
    if cfg.source != "csv":
        return
    path = resolve_csv_path(cfg, root)
    header = read_header(path)
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
        bundle = resolve_bundle_path(path)
        model, info = load_bundle_shell(bundle)
        matrix = model.router.union_relation().detach().cpu().numpy()
        kind = "learned prior" if any(p.learned_prior for p in info.spec.parts) and len(info.spec.parts) == 1 else "prior"
        router = model.router
        groups = [(p.name, router.task_offsets[g], router.task_offsets[g + 1]) for g, p in enumerate(router.part_specs)]
        return matrix, list(info.spec.tasks), f"{kind} of {bundle}", groups if len(groups) > 1 else []
    if not path.exists():
        raise CftError(f"{path} does not exist.", hint="Pass a .npy/.csv relation matrix, a run folder or a bundle.")
    if relation_suffix(path) not in (".npy", ".csv", ".csv.gz"):
        raise CftError(f"{path}: expected a .npy or .csv relation matrix, a run folder or a bundle .safetensors.")
    matrix, names = read_labelled_relation(path)
    if names is None:  # an .npy without its sidecar: number the tasks
        names = [f"task{i}" for i in range(matrix.shape[0])]
    elif len(names) != matrix.shape[0]:
        raise CftError(f"{path}: {len(names)} task names in {tasks_sidecar(path).name} for a {matrix.shape[0]}-row matrix.")
    return check_relation(matrix, len(names), str(path)), names, str(path), []
