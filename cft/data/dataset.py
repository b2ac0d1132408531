"""Datasets: builtin (offline), chemprop-style CSV, OGB. All end up as a `MolDataset`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import rdkit
import torch

from cft.console import info, warn
from cft.data.graphs import GraphDataset, GraphStore, featurise
from cft.data.select import select
from cft.data.split import (
    balanced_scaffold_split,
    check_nonempty,
    chemprop_splits,
    column_split,
    random_split,
    read_splits_file,
    rows_to_split,
    scaffold_split,
)
from cft.errors import CftError
from cft.files.paths import sha256_file
from cft.recipe.schema import DataConfig


@dataclass
class MolDataset:
    """Featurised molecules with labels and a train/valid/test split."""

    name: str
    tasks: list[str]
    kinds: list[str]  # "binary" | "regression" per task
    smiles: list[str]  # kept molecules only
    rows: np.ndarray  # source row number (0-based data row) of each kept molecule
    y: torch.Tensor  # [n, T] float32, NaN = missing
    store: GraphStore
    split: dict[str, np.ndarray]
    metric: str
    identity: dict
    skipped: list[tuple[int, str]] = field(default_factory=list)
    dropped_tasks: dict[str, str] = field(default_factory=dict)  # task columns left out: {task: reason}
    featurise_seconds: float = 0.0
    cache_hit: bool = False

    def __len__(self) -> int:
        return len(self.store)

    def subset(self, name: str) -> GraphDataset:
        return GraphDataset(self.store, self.y, self.split[name])

    def labels(self, name: str) -> np.ndarray:
        return self.y[torch.as_tensor(self.split[name])].numpy()

    def chemprop_splits(self) -> list[dict[str, list[int]]]:
        """The split in chemprop's `--splits-file` format (input-row indices; skipped rows in none)."""
        return chemprop_splits(self.split, self.rows)

    def split_column(self) -> list[tuple[int, str, str]]:
        """(input row, SMILES, train|val|test) for every input row in input order, the value
        chemprop's `--splits-column` reads; "" for rows that are in no split (unparsable SMILES)."""
        names = {"train": "train", "valid": "val", "test": "test"}
        by_row = {int(row): (smiles, "") for row, smiles in self.skipped}
        for name, indices in self.split.items():
            for k in indices:
                by_row[int(self.rows[k])] = (self.smiles[k], names[name])
        for k, row in enumerate(self.rows):
            by_row.setdefault(int(row), (self.smiles[k], ""))
        return [(row, smiles, split) for row, (smiles, split) in sorted(by_row.items())]

    def unscorable(self, metric: str, splits: tuple[str, ...] = ("valid", "test")) -> dict[str, str]:
        """{task: reason} for the tasks `metric` cannot score on one of `splits`, by the rule
        `cft.metrics.score` applies: ROC-AUC and AP need both classes among the labelled
        molecules, RMSE one labelled molecule. Such a task is left out of that split's mean."""
        reasons: dict[str, list[str]] = {}
        for name in splits:
            labels = self.labels(name)
            for j, task in enumerate(self.tasks):
                observed = labels[:, j][~np.isnan(labels[:, j])]
                if observed.size == 0:
                    reasons.setdefault(task, []).append(f"{name}: no labelled molecule")
                elif metric in ("rocauc", "ap") and not ((observed == 1).any() and (observed == 0).any()):
                    only = "positive (1)" if (observed == 1).any() else "negative (0)"
                    reasons.setdefault(task, []).append(f"{name}: only {only} labels among {observed.size} labelled molecules")
        return {task: "; ".join(why) for task, why in reasons.items()}


def default_metric(kinds: list[str], source: str, path: str) -> str:
    if all(k == "binary" for k in kinds):
        return "ap" if source == "builtin" else "rocauc"
    if all(k == "regression" for k in kinds):
        return "rmse"
    raise CftError(
        f"{path}: tasks mix binary and regression labels; one run scores one kind.",
        hint="Select one kind with data.tasks, or force kinds with data.task_kinds.",
    )


def load_dataset(cfg: DataConfig, root: Path, seed: int = 0, *, need_labels: bool = True) -> MolDataset:
    """Load, featurise (cached) and split a dataset as the recipe's `data` section says."""
    if cfg.source == "ogb":
        return _load_ogb(cfg, root, seed, need_labels)
    if cfg.source == "builtin":
        from cft.data.builtin import BUILTIN_VERSION, builtin_smiles_path, read_builtin

        smiles, tasks, labels = read_builtin()
        if cfg.limit:
            smiles, labels = smiles[: cfg.limit], labels[: cfg.limit]
        kinds = ["binary"] * len(tasks)
        tasks, labels, kinds = _select_tasks(cfg, tasks, labels, kinds, "the builtin dataset")
        identity = {"source": "builtin", "version": BUILTIN_VERSION, "rdkit": rdkit.__version__, "file": Path(builtin_smiles_path()).name}
        split_values, source_name, display = None, builtin_smiles_path(), "builtin"
        dropped = {}
    else:
        from cft.data.csvsource import read_csv_table, resolve_csv_path

        table = read_csv_table(cfg, root, need_labels)
        path = resolve_csv_path(cfg, root)
        smiles, tasks, labels, kinds, split_values = table.smiles, table.tasks, table.labels, table.kinds, table.split_values
        dropped = {task: "no label in any row of the input" for task in table.dropped}
        identity = {"source": "csv", "path": cfg.path, "sha256": sha256_file(path)}
        source_name, display = str(path), Path(cfg.path).name.split(".")[0]

    store, valid, seconds, hit = featurise(smiles, label=display)
    skipped = [(int(i), str(smiles[i])) for i in np.flatnonzero(~valid)]
    if skipped and cfg.strict:
        listed = "; ".join(f"row {r + 2}: {s!r}" for r, s in skipped[:10])
        raise CftError(
            f"{source_name}: {len(skipped)} SMILES cannot be parsed by RDKit ({listed}{' ...' if len(skipped) > 10 else ''}).",
            hint="Fix or remove those rows, or set data.strict: false to skip them (they are listed in the run folder).",
        )
    if skipped:
        # the trainer lists a run's own skips in its folder; backbone pretraining data is not listed
        warn(f"{display}: skipped {len(skipped)} SMILES that RDKit cannot parse.")
    if not valid.any():
        raise CftError(f"{source_name}: no SMILES could be parsed; is data.smiles_column the SMILES column?")
    rows = np.flatnonzero(valid)
    kept_smiles = [str(smiles[i]) for i in rows]
    labels = labels[valid]
    metric = default_metric(kinds, cfg.source, source_name)
    if cfg.split.method == "file":
        split = rows_to_split(read_splits_file(_split_file(cfg, root), len(smiles)), rows)
    else:
        split = _split(cfg, kept_smiles, [split_values[i] for i in rows] if split_values else None, seed, source_name, rows)
    check_nonempty(split, source_name)
    if need_labels:
        labels, tasks, kinds = _drop_untrained_tasks(labels, split["train"], tasks, kinds, dropped, cfg.strict, source_name)
    _warn_dropped(display, dropped)
    identity.update({"tasks": tasks, "n_molecules": int(len(rows)), "split": cfg.split.model_dump(mode="json")})
    return MolDataset(
        name=display, tasks=tasks, kinds=kinds, smiles=kept_smiles, rows=rows, y=torch.from_numpy(labels),
        store=store, split=split, metric=metric, identity=identity, skipped=skipped, dropped_tasks=dropped,
        featurise_seconds=seconds, cache_hit=hit,
    )


def _select_tasks(cfg: DataConfig, tasks: list[str], labels: np.ndarray, kinds: list[str], source: str):
    """The tasks `data.tasks` chooses (all when unset), in the order of its patterns."""
    if not cfg.tasks:
        return tasks, labels, kinds
    chosen = select(tasks, cfg.tasks, source=source)
    return [tasks[i] for i in chosen], labels[:, chosen], [kinds[i] for i in chosen]


def _split_file(cfg: DataConfig, root: Path) -> Path:
    """data.split.path, read from the data root when relative (as data.path is)."""
    path = Path(cfg.split.path or "").expanduser()
    return path if path.is_absolute() else root / path


def _split(cfg: DataConfig, smiles: list[str], split_values: Optional[list], seed: int, source: str, rows: np.ndarray | None = None) -> dict[str, np.ndarray]:
    method = cfg.split.method
    if method in ("scaffold", "auto"):
        return scaffold_split(smiles, cfg.split.fractions)
    split_seed = cfg.split.seed if cfg.split.seed is not None else seed
    if method == "scaffold_balanced":
        return balanced_scaffold_split(smiles, cfg.split.fractions, split_seed)
    if method == "random":
        return random_split(len(smiles), cfg.split.fractions, split_seed)
    if method == "column":
        return column_split(split_values or [], source, cfg.split.column or "", rows)
    raise CftError(f"data.split.method {method!r} is not available for {cfg.source} data.")


def _drop_untrained_tasks(labels: np.ndarray, train: np.ndarray, tasks: list[str], kinds: list[str], dropped: dict[str, str], strict: bool, source: str):
    """Leave out the tasks without a label in the training split (added to `dropped`);
    `data.strict: true` refuses them instead. Every task without training labels: refused."""
    counts = (~np.isnan(labels[train])).sum(axis=0)
    empty = [t for t, c in zip(tasks, counts) if c == 0]
    if empty and (strict or len(empty) == len(tasks)):
        raise CftError(
            f"{source}: task(s) {', '.join(empty[:10])}{' ...' if len(empty) > 10 else ''} have no labels in the training split"
            + (" (data.strict: true refuses them)." if strict and len(empty) < len(tasks) else "; no task is left to train."),
            hint="Remove them with data.tasks / data.exclude_columns, or use another split"
            + (", or set data.strict: false to leave them out (listed in dropped_tasks.json of the run)." if strict else "."),
        )
    if not empty:
        return labels, tasks, kinds
    keep = [j for j, c in enumerate(counts) if c > 0]
    dropped.update({t: "no label in the training split" for t in empty})
    return labels[:, keep], [tasks[j] for j in keep], [kinds[j] for j in keep]


def _warn_dropped(display: str, dropped: dict[str, str]) -> None:
    if not dropped:
        return
    names = list(dropped)
    counts = {}
    for reason in dropped.values():
        counts[reason] = counts.get(reason, 0) + 1
    why = "; ".join(f"{n} with {reason}" for reason, n in counts.items())
    warn(
        f"{display}: left out {len(names)} task column(s) ({why}): {', '.join(names[:5])}{' ...' if len(names) > 5 else ''}; "
        "`cft train` lists them all in dropped_tasks.json of the run (data.strict: true refuses them instead)."
    )


def _load_ogb(cfg: DataConfig, root: Path, seed: int, need_labels: bool) -> MolDataset:
    from cft.data.ogbsource import load_ogb

    ogb = load_ogb(cfg.name or "", root)
    labels, tasks, kinds, store = ogb.labels, ogb.tasks, ogb.kinds, ogb.store
    tasks, labels, kinds = _select_tasks(cfg, tasks, labels, kinds, str(cfg.name))
    split = ogb.split
    n = len(store)
    if cfg.limit and cfg.limit < n:
        keep = np.arange(cfg.limit)
        store, labels = store.select(keep), labels[: cfg.limit]
        split = {k: v[v < cfg.limit] for k, v in split.items()}
        n = cfg.limit
    if cfg.split.method in ("scaffold", "scaffold_balanced", "random"):
        split = _split(cfg, ogb.smiles[:n], None, seed, str(ogb.folder))  # _split uses split.seed, else the recipe seed
    elif cfg.split.method == "file":
        split = rows_to_split(read_splits_file(_split_file(cfg, root), n), np.arange(n))
    check_nonempty(split, str(ogb.folder))
    dropped: dict[str, str] = {}
    if need_labels:
        labels, tasks, kinds = _drop_untrained_tasks(labels, split["train"], tasks, kinds, dropped, cfg.strict, str(ogb.folder))
    _warn_dropped(cfg.name or "ogb", dropped)
    identity = {"source": "ogb", "name": cfg.name, "version": ogb.version, "tasks": tasks, "n_molecules": n, "split": cfg.split.model_dump(mode="json")}
    info(f"{cfg.name}: {n} molecules, {len(tasks)} tasks, official metric {ogb.metric}")
    return MolDataset(
        name=cfg.name or "ogb", tasks=tasks, kinds=kinds, smiles=ogb.smiles[:n], rows=np.arange(n),
        y=torch.from_numpy(np.ascontiguousarray(labels, dtype=np.float32)), store=store, split=split,
        metric=ogb.metric, identity=identity, dropped_tasks=dropped,
    )
