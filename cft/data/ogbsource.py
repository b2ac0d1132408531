"""OGB molecule datasets (`ogbg-mol*`) through ogb's own `PygGraphPropPredDataset`.

ogb 1.3.6 has three traps that this module disarms:
- it calls `torch.load` without `weights_only`, which fails on torch >= 2.6 unless PyG's data
  classes are allow-listed (and unpickles anything on older torch): we force `weights_only=True`
  and allow-list PyG's data classes with `torch.serialization.safe_globals` (the safe,
  weights-only unpickler: nothing arbitrary is ever unpickled);
- it calls `input()` when a dataset folder lacks its RELEASE file, or before a large download:
  we check the folder up front and refuse interactive prompts;
- a failed download leaves a half-made folder that triggers the prompt next time: downloads go
  to a staging folder that is moved into place only when complete.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import unittest.mock
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from cft.errors import CftError

RAW_FILES = ("edge.csv.gz", "num-node-list.csv.gz", "num-edge-list.csv.gz", "node-feat.csv.gz", "edge-feat.csv.gz", "graph-label.csv.gz")


@dataclass
class OgbData:
    store: object  # GraphStore
    labels: np.ndarray
    tasks: list[str]
    kinds: list[str]
    smiles: list[str]
    split: dict[str, np.ndarray]
    metric: str
    folder: Path
    version: str


def master_info(name: str) -> pd.Series:
    import ogb.graphproppred

    master = pd.read_csv(Path(ogb.graphproppred.__file__).parent / "master.csv", index_col=0, keep_default_na=False)
    if name not in master:
        known = ", ".join(c for c in master.columns if c.startswith("ogbg-mol"))
        raise CftError(f"data.name {name!r} is not an OGB molecule dataset; known: {known}.")
    return master[name]


def dataset_folder(name: str, root: Path) -> Path:
    base = root / name.replace("-", "_")
    pyg = root / (name.replace("-", "_") + "_pyg")
    return pyg if pyg.exists() else base


def check_folder(name: str, folder: Path, version: str, split_name: str) -> None:
    """Every file ogb needs must be there, so that ogb neither prompts nor half-downloads."""
    missing = []
    if not (folder / f"RELEASE_v{version}.txt").exists():
        missing.append(f"RELEASE_v{version}.txt")
    if not (folder / "processed" / "geometric_data_processed.pt").exists():
        missing += [f"raw/{f}" for f in RAW_FILES if not (folder / "raw" / f).exists()]
    missing += [
        f"split/{split_name}/{s}.csv.gz" for s in ("train", "valid", "test") if not (folder / "split" / split_name / f"{s}.csv.gz").exists()
    ]
    if not (folder / "mapping" / "mol.csv.gz").exists():
        missing.append("mapping/mol.csv.gz")
    if missing:
        raise CftError(
            f"OGB dataset folder {folder} is incomplete: missing {', '.join(missing)}.",
            hint=f"Delete the folder and let cft download {name} again, or copy a complete copy of it "
            f"(as ogb unpacks it from its download) to {folder}.",
        )


def _no_prompt(*_args, **_kwargs):
    raise CftError("ogb asked an interactive question; cft never answers prompts.", hint="Check the dataset folder is complete.")


@contextlib.contextmanager
def _ogb_guard():
    """Allow PyG's data classes in torch.load (weights-only) and refuse input() prompts."""
    from torch_geometric.data.data import Data, DataEdgeAttr, DataTensorAttr
    from torch_geometric.data.storage import (
        BaseStorage,
        EdgeStorage,
        GlobalStorage,
        NodeStorage,
    )

    allowed = [Data, DataEdgeAttr, DataTensorAttr, GlobalStorage, BaseStorage, NodeStorage, EdgeStorage]
    real_load = torch.load

    def weights_only_load(*args, **kwargs):
        # torch < 2.6 defaults to weights_only=False: a processed file in a user's folder must never
        # be unpickled with the full unpickler, whatever torch version is installed
        kwargs["weights_only"] = True
        return real_load(*args, **kwargs)

    with (
        torch.serialization.safe_globals(allowed),
        unittest.mock.patch("builtins.input", _no_prompt),
        unittest.mock.patch.object(torch, "load", weights_only_load),
    ):
        yield


def _open_dataset(name: str, root: Path):
    from ogb.graphproppred import PygGraphPropPredDataset

    with _ogb_guard(), contextlib.redirect_stdout(None):
        return PygGraphPropPredDataset(name=name, root=str(root))


def _download(name: str, root: Path, folder: Path) -> None:
    staging = Path(tempfile.mkdtemp(prefix=".cft-ogb-", dir=root))
    try:
        _open_dataset(name, staging)
        made = dataset_folder(name, staging)
        shutil.move(str(made), str(folder))  # atomic: a complete staging folder moved into place (a rename on one file system)
    except CftError:
        raise
    except (Exception, SystemExit) as exc:  # ogb's download calls exit() when it gives up
        raise CftError(
            f"{name} is not in {folder} and downloading it failed ({type(exc).__name__}: {str(exc)[:200]}).",
            hint=f"On a machine with internet, run `python -c \"from ogb.graphproppred import PygGraphPropPredDataset as D; "
            f"D('{name}', root='DATA')\"` and copy DATA/{folder.name} to {folder}; or pass --data-root to where it is.",
        ) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def load_ogb(name: str, root: Path) -> OgbData:
    from cft.data.graphs import GraphStore

    info = master_info(name)
    version = str(info["version"])
    folder = dataset_folder(name, root)
    if not folder.exists():
        root.mkdir(parents=True, exist_ok=True)
        _download(name, root, folder)
    check_folder(name, folder, version, info["split"])
    try:
        dataset = _open_dataset(name, root)
        split = {k: v.numpy().astype(np.int64) for k, v in dataset.get_idx_split().items()}
    except CftError:
        raise
    except Exception as exc:
        raise CftError(
            f"ogb could not load {folder}: {type(exc).__name__}: {str(exc)[:300]}.",
            hint="The folder may be damaged: delete its processed/ subfolder to rebuild it from raw/, or replace the folder.",
        ) from None
    data, slices = dataset._data, dataset.slices
    store = GraphStore(
        x=data.x.long(), edge_index=data.edge_index.long(), edge_attr=data.edge_attr.long(),
        node_ptr=slices["x"].long(), edge_ptr=slices["edge_index"].long(),
    )
    labels = data.y.float().numpy().reshape(len(store), -1)
    mapping = pd.read_csv(folder / "mapping" / "mol.csv.gz")
    tasks = [c for c in mapping.columns if c not in ("smiles", "mol_id")][: labels.shape[1]]
    if len(tasks) != labels.shape[1]:
        tasks = [f"task_{i}" for i in range(labels.shape[1])]
    kind = "regression" if info["task type"] == "regression" else "binary"
    smiles = mapping["smiles"].astype(str).tolist() if "smiles" in mapping else [""] * len(store)
    return OgbData(
        store=store, labels=labels, tasks=tasks, kinds=[kind] * len(tasks), smiles=smiles, split=split,
        metric=info["eval metric"], folder=folder, version=version,
    )
