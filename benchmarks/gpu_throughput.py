"""Training and inference throughput of the molpcba-sized model on 437,929 real molecules.

The molecules are those of HIV.csv.gz and muv.csv.gz (134k distinct), repeated to molpcba's
437,929; the 128 task labels are random (throughput does not depend on their values). The
model is recipes/molpcba.yaml's: GIN-VN 300x5, K=8 adapters of rank 16 in every layer, 128
heads. Each measurement is one epoch through cft's real trainer (bf16 autocast, pinned memory,
non-blocking copies, DataLoader workers), then one inference pass over every molecule.

    python benchmarks/gpu_throughput.py --data DIR [--molecules N] [--device cuda] [--workers 8]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cft.data.dataset import MolDataset
from cft.data.graphs import GraphDataset, featurise  # noqa: E402
from cft.recipe.load import load_recipe
from cft.training.inference import predict_logits
from cft.training.trainer import train_recipe

MOLPCBA_MOLECULES = 437_929
MOLPCBA_TASKS = 128


def build_dataset(data_dir: Path, molecules: int, seed: int = 0) -> tuple[MolDataset, float]:
    smiles = []
    for name in ("HIV.csv.gz", "muv.csv.gz"):
        frame = pd.read_csv(data_dir / name)
        smiles += frame["smiles"].astype(str).tolist()
    start = time.perf_counter()
    store, valid, _, _ = featurise(smiles, label="HIV+MUV")
    seconds = time.perf_counter() - start
    kept = np.flatnonzero(valid)
    repeat = np.resize(np.arange(len(kept)), molecules)  # cycle through the real molecules
    store = store.select(repeat)
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, size=(molecules, MOLPCBA_TASKS)).astype(np.float32)
    y[rng.random(y.shape) < 0.8] = np.nan  # molpcba-like sparsity
    y[0, :] = 0
    y[1, :] = 1
    small = np.arange(min(2000, molecules))
    dataset = MolDataset(
        name="hiv+muv-as-molpcba", tasks=[f"task_{i}" for i in range(MOLPCBA_TASKS)], kinds=["binary"] * MOLPCBA_TASKS,
        smiles=[smiles[kept[i]] for i in repeat[:10]], rows=repeat, y=torch.from_numpy(y), store=store,
        split={"train": np.arange(molecules), "valid": small, "test": small}, metric="ap",
        identity={"source": "benchmark", "molecules": molecules},
    )
    return dataset, seconds


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def measure(dataset: MolDataset, device: str, workers: int, batch_size: int, freeze: bool, adapters: bool, compile_model: bool) -> dict:
    recipe = load_recipe(REPO / "recipes" / "molpcba.yaml", [
        "backbone.pretrain=null", f"backbone.freeze={str(freeze).lower()}", f"adapters.enabled={str(adapters).lower()}",
        "train.epochs=1", f"train.batch_size={batch_size}", f"train.num_workers={workers}", "train.patience=null",
        f"train.compile={str(compile_model).lower()}", "eval.batch_size=1024",
    ])
    with tempfile.TemporaryDirectory() as tmp:
        if device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        summary = train_recipe(recipe, Path(tmp) / "run", REPO, device=device, dataset=dataset)
        from cft.files.bundle import load_bundle

        model, _ = load_bundle(Path(tmp) / "run" / "bundle.safetensors")
    model.to(device)
    everything = GraphDataset(dataset.store, dataset.y, np.arange(len(dataset)))
    predict_logits(model, GraphDataset(dataset.store, dataset.y, np.arange(2048)), 1024, torch.device(device), amp=True)  # warm-up
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    predict_logits(model, everything, 1024, torch.device(device), amp=True)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    infer = time.perf_counter() - start
    return {
        "train_graphs_per_s": summary["graphs_per_second"],
        "train_seconds": summary["seconds"]["train"],
        "infer_graphs_per_s": len(dataset) / infer,
        "trainable": summary["params"]["trainable"],
        "total": summary["params"]["total"],
        "gpu_peak_gib": torch.cuda.max_memory_allocated() / 1024**3 if device.startswith("cuda") else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=REPO / ".." / "shared" / "data")
    parser.add_argument("--molecules", type=int, default=MOLPCBA_MOLECULES)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--compile", action="store_true", help="also measure torch.compile")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    name = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "CPU"
    dataset, feat_seconds = build_dataset(args.data, args.molecules)
    print(f"device: {name}; torch {torch.__version__}; {len(dataset):,} molecules ({feat_seconds:.1f}s featurising 134k distinct); "
          f"batch {args.batch_size}; {args.workers} loader workers; bf16 autocast", flush=True)
    rows = {}
    variants = [("adapters (frozen backbone, K=8 r=16)", True, True, False), ("full fine-tuning", False, False, False)]
    if args.compile:
        variants.append(("adapters + torch.compile", True, True, True))
    for label, freeze, adapters, comp in variants:
        rows[label] = measure(dataset, args.device, args.workers, args.batch_size, freeze, adapters, comp)
        r = rows[label]
        print(f"{label:40s} train {r['train_graphs_per_s']:>9,.0f} graphs/s   infer {r['infer_graphs_per_s']:>9,.0f} graphs/s   "
              f"params {r['trainable']:,}/{r['total']:,}   gpu peak {r['gpu_peak_gib'] or 0:.1f} GiB", flush=True)
    result = {"device": name, "torch": torch.__version__, "molecules": len(dataset), "featurise_seconds": feat_seconds,
              "batch_size": args.batch_size, "workers": args.workers, "peak_rss_gib": peak_rss_gib(), "rows": rows}
    print(f"peak resident memory of this process: {result['peak_rss_gib']:.1f} GiB")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
