"""`cft eval`: score a bundle (or a run's bundle) on a split of its data, per task and mean.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from cft.data.dataset import MolDataset, load_dataset
from cft.errors import CftError
from cft.files.bundle import BundleInfo, load_bundle, resolve_bundle_path
from cft.recipe.schema import DataConfig
from cft.spec import EVAL_BATCH_SIZE
from cft.training.distributed import pick_device, single
from cft.training.inference import evaluate_split


def bundle_data_config(info: BundleInfo, data_override: Optional[str] = None) -> DataConfig:
    """The data a bundle was trained on (same file, tasks and split), or `data_override`'s CSV."""
    recorded = info.data.get("config") or {}
    if not isinstance(recorded, dict):
        raise CftError(f"{info.path}: its recorded data settings are damaged (not a mapping).", hint="Pass --data CSV.")
    raw = dict(recorded)
    if data_override:
        raw.update({"source": "csv", "path": data_override, "name": None})
    if not raw:
        raise CftError(f"{info.path} does not record the data it was trained on.", hint="Pass --data CSV.")
    raw["tasks"] = list(info.spec.tasks)  # exactly the bundle's tasks, in its order
    try:
        return DataConfig.model_validate(raw)
    except Exception as exc:
        raise CftError(f"{info.path}: its recorded data settings are invalid ({str(exc)[:200]}).") from None


def check_tasks(dataset: MolDataset, info: BundleInfo) -> None:
    if dataset.tasks != info.spec.tasks:
        missing = [t for t in info.spec.tasks if t not in dataset.tasks]
        raise CftError(f"The data does not provide the bundle's tasks {', '.join(missing[:8])}.", hint="Pass data holding those task columns with --data.")


def evaluate_bundle(
    target: str | Path,
    *,
    data_root: Path,
    split: str = "test",
    backbone_path: Optional[str] = None,
    data_override: Optional[str] = None,
    metric: Optional[str] = None,
    device: str = "auto",
    batch_size: int = EVAL_BATCH_SIZE,
) -> dict:
    bundle_path = resolve_bundle_path(target)
    model, info = load_bundle(bundle_path, backbone_path=backbone_path)
    cfg = bundle_data_config(info, data_override)
    seed = int(info.provenance.get("seed", 0))
    dataset = load_dataset(cfg, data_root, seed)
    check_tasks(dataset, info)
    metric = metric or info.metrics.get("metric") or dataset.metric
    dev = pick_device(device)
    model.to(dev)
    result = evaluate_split(model, dataset, split, metric, batch_size, dev, single())
    return {
        "bundle": str(bundle_path),
        "split": split,
        "metric": metric,
        "mean": result["mean"],
        "per_task": result["per_task"],
        "molecules": int(len(dataset.split[split])),
        "data": cfg.model_dump(mode="json"),
    }
