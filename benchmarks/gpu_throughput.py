"""Training and inference throughput of the molpcba-sized model on 437,929 real molecules.

The molecules are those of HIV.csv.gz and muv.csv.gz (134k distinct), repeated to molpcba's
437,929; the 128 task labels are random (throughput does not depend on their values). The
model is recipes/molpcba.yaml's: GIN-VN 300x5, K=8 adapters of rank 16 in every layer, 128
heads. Each measurement trains through cft's real trainer (bf16 autocast, pinned memory,
non-blocking copies, batches sliced from the compact store) for `--graphs` molecules, then runs
inference over `--infer-graphs` molecules. Variants: adapters in every layer (the recipe) at batch
256 (the earlier measurement) and at `--batch-size`; adapters in layers 3-4 with the frozen prefix
(layers 0-2) computed once and cached on the device; full fine-tuning at both batch sizes.

    python benchmarks/gpu_throughput.py --data DIR [--molecules N] [--device cuda] [--batch-size 2048] [--graphs 200000]
                                        [--variants "prefix cached"] [--source-molecules N]

`--source-molecules N` takes only the first N molecules of each CSV (tests/test_benchmarks.py runs
every variant so on a CPU in seconds, so that the few minutes of a lent GPU are not lost to a
broken script).

On a CPU the same script measures what the set costs in memory: `--device cpu --variants "prefix
cached" --graphs 20480 --infer-graphs 2048` computes the frozen prefix (layers 0-2) of all 437,929
molecules once, trains ten steps on it and reports the cache's size and the process's peak RSS.
"""

from __future__ import annotations

import argparse
import json
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

from cft.data.dataset import MolDataset  # noqa: E402
from cft.data.graphs import GraphDataset, featurise  # noqa: E402
from cft.recipe.load import load_recipe  # noqa: E402
from cft.training.inference import predict_logits  # noqa: E402
from cft.training.trainer import train_recipe  # noqa: E402

MOLPCBA_MOLECULES = 437_929
MOLPCBA_TASKS = 128


def build_dataset(data_dir: Path, molecules: int, seed: int = 0, per_file: int | None = None) -> tuple[MolDataset, float]:
    """The molecules of HIV.csv.gz and muv.csv.gz (the first `per_file` of each; None: all),
    repeated to `molecules`, with random molpcba-like labels; and the seconds featurising took."""
    smiles = []
    for name in ("HIV.csv.gz", "muv.csv.gz"):
        frame = pd.read_csv(data_dir / name, nrows=per_file)
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
        smiles=[smiles[kept[i]] for i in repeat], rows=repeat, y=torch.from_numpy(y), store=store,
        split={"train": np.arange(molecules), "valid": small, "test": small}, metric="ap",
        identity={"source": "benchmark", "molecules": molecules},
    )
    return dataset, seconds


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def measure(dataset: MolDataset, device: str, workers: int, batch_size: int, freeze: bool, adapters: bool, compile_model: bool,
            graphs: int, infer_graphs: int, extra: list[str]) -> dict:
    recipe = load_recipe(REPO / "recipes" / "molpcba.yaml", [
        "backbone.pretrain=null", f"backbone.freeze={str(freeze).lower()}", f"adapters.enabled={str(adapters).lower()}",
        "train.epochs=1", f"train.batch_size={batch_size}", f"train.num_workers={workers}", "train.patience=null",
        f"train.compile={str(compile_model).lower()}", "eval.batch_size=1024", f"train.max_steps={max(1, graphs // batch_size)}", *extra,
    ])
    with tempfile.TemporaryDirectory() as tmp:
        if device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        summary = train_recipe(recipe, Path(tmp) / "run", REPO, device=device, dataset=dataset)
        from cft.files.bundle import load_bundle

        model, _ = load_bundle(Path(tmp) / "run" / "bundle.safetensors")
    model.to(device)
    everything = GraphDataset(dataset.store, dataset.y, np.arange(min(infer_graphs, len(dataset))))
    predict_logits(model, GraphDataset(dataset.store, dataset.y, np.arange(min(2048, len(dataset)))), 1024, torch.device(device), amp=device.startswith("cuda"))  # warm-up
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    predict_logits(model, everything, 1024, torch.device(device), amp=device.startswith("cuda"))
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    infer = time.perf_counter() - start
    return {
        "batch_size": batch_size,
        "prefix_seconds": summary["seconds"].get("prefix", 0.0),
        "train_graphs_per_s": summary["graphs_per_second"],
        "train_seconds": summary["seconds"]["train"],
        "infer_graphs_per_s": len(everything) / infer,
        "trainable": summary["params"]["trainable"],
        "total": summary["params"]["total"],
        "gpu_peak_gib": torch.cuda.max_memory_allocated() / 1024**3 if device.startswith("cuda") else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=REPO / ".." / "shared" / "data")
    parser.add_argument("--molecules", type=int, default=MOLPCBA_MOLECULES)
    parser.add_argument("--source-molecules", type=int, help="only the first N molecules of each CSV (a check of the script; default: all)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers (batches are slices of the store: 0 is usually fastest)")
    parser.add_argument("--batch-size", type=int, default=2048, help="the large batch (the 256 rows are measured as well)")
    parser.add_argument("--graphs", type=int, default=200_000, help="molecules trained on per measurement")
    parser.add_argument("--infer-graphs", type=int, default=100_000, help="molecules of each inference measurement")
    parser.add_argument("--compile", action="store_true", help="also measure torch.compile")
    parser.add_argument("--variants", help="only the variants whose names contain one of these comma-separated parts (default: all)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    name = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "CPU"
    dataset, feat_seconds = build_dataset(args.data, args.molecules, per_file=args.source_molecules)
    rss_featurised = peak_rss_gib()  # the store of every molecule, before any model or prefix
    print(f"device: {name}; torch {torch.__version__}; {len(dataset):,} molecules ({feat_seconds:.1f}s featurising, {len(np.unique(dataset.rows)):,} distinct); "
          f"batch {args.batch_size}; {args.workers} loader workers; bf16 autocast", flush=True)
    rows = {}
    big = args.batch_size
    top = ["adapters.layers=[3,4]"]
    variants = [
        ("adapters every layer (K=8 r=16), batch 256", 256, True, True, False, []),
        (f"adapters every layer (K=8 r=16), batch {big}", big, True, True, False, []),
        (f"adapters layers 3-4 (K=8 r=16), prefix cached, batch {big}", big, True, True, False, top),
        ("full fine-tuning, batch 256", 256, False, False, False, []),
        (f"full fine-tuning, batch {big}", big, False, False, False, []),
    ]
    if args.compile:
        variants.append((f"adapters layers 3-4 + torch.compile, batch {big}", big, True, True, True, top))
    if args.variants:
        wanted = [w.strip() for w in args.variants.split(",") if w.strip()]
        variants = [v for v in variants if any(w in v[0] for w in wanted)]
        if not variants:
            parser.error(f"--variants {args.variants!r} matches none of the variants")
    hidden = 300
    prefix_bytes = (dataset.store.x.size(0) + len(dataset.store)) * hidden * 4
    print(f"{dataset.store.x.size(0):,} atoms: a float32 prefix cache takes {prefix_bytes / 1024**3:.2f} GiB (bf16: half)", flush=True)
    for label, bs, freeze, adapters, comp, extra in variants:
        rows[label] = measure(dataset, args.device, args.workers, bs, freeze, adapters, comp, args.graphs, args.infer_graphs, extra)
        r = rows[label]
        print(f"{label:40s} train {r['train_graphs_per_s']:>9,.0f} graphs/s   infer {r['infer_graphs_per_s']:>9,.0f} graphs/s   "
              f"params {r['trainable']:,}/{r['total']:,}   gpu peak {r['gpu_peak_gib'] or 0:.1f} GiB", flush=True)
    result = {"device": name, "torch": torch.__version__, "molecules": len(dataset), "featurise_seconds": feat_seconds,
              "atoms": int(dataset.store.x.size(0)), "prefix_cache_gib_float32": prefix_bytes / 1024**3, "graphs_per_measurement": args.graphs,
              "batch_size": args.batch_size, "workers": args.workers, "peak_rss_gib_featurised": rss_featurised,
              "peak_rss_gib": peak_rss_gib(), "command": " ".join(["python", "benchmarks/gpu_throughput.py", *sys.argv[1:]]), "rows": rows}
    print(f"peak resident memory of this process: {result['peak_rss_gib']:.1f} GiB")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
