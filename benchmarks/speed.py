"""Speed benchmarks: ratios measured side by side, in one run, on the same data and batch size.

    python benchmarks/speed.py [--quick] [--data ../shared/data] [--json results/speed.json]

Every measurement runs in its own subprocess (so peak resident memory is that mode's alone), in
interleaved order (A, B, C, A, B, C, ...), and the median over repetitions is reported:

- training graphs/s: cft adapters (K=4, r=8, every layer) vs cft full fine-tuning of the same
  GIN-VN 300x5 (target >= 1.5x); K=8 routed vs one adapter of the same rank vs no adapter
  (target: routing adds at most 15%), and one adapter of rank 64 (K=8 r=8's bank width, so the
  same adapter FLOPs: what routing alone costs); cft full fine-tuning vs a plain PyG loop of the OGB
  example GIN-VN (benchmarks/reference_ginvn.py; target >= 1.0x);
- inference graphs/s and peak resident memory of each mode;
- featurisation cold vs cached (target >= 20x);
- time per epoch against molecules (MUV subsets) and tasks (ToxCast task subsets).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

BATCH = 32
MODES = {
    # name: --set overrides of the base recipe (frozen GIN-VN 300x5, Tox21)
    "cft full fine-tuning": ["backbone.freeze=false", "adapters.enabled=false", "train.lr=0.001"],
    "cft adapters K=4 r=8 (routed)": [],
    "cft adapters K=8 r=8 (routed)": ["adapters.num_adapters=8"],
    "cft one adapter K=1 r=8": ["adapters.num_adapters=1", "routing.mode=uniform"],
    # same bank width as K=8 r=8 (64 columns, same adapter FLOPs) without routing: isolates what
    # the router and the per-node weights cost from what eight adapters' arithmetic costs
    "cft one adapter K=1 r=64": ["adapters.num_adapters=1", "adapters.rank=64", "routing.mode=uniform"],
    "cft no adapter (head only)": ["adapters.enabled=false"],
    "plain PyG loop (OGB example GIN-VN)": None,
}

# training-throughput ratios: name -> (numerator mode, denominator mode)
RATIOS = {
    "adapters K=4 / full fine-tuning (target >= 1.5)": ("cft adapters K=4 r=8 (routed)", "cft full fine-tuning"),
    "one adapter K=1 / K=8 routed (routing overhead; target <= 1.15)": ("cft one adapter K=1 r=8", "cft adapters K=8 r=8 (routed)"),
    "one adapter K=1 r=64 / K=8 r=8 routed (routing alone, same bank FLOPs)": ("cft one adapter K=1 r=64", "cft adapters K=8 r=8 (routed)"),
    "no adapter / K=8 routed": ("cft no adapter (head only)", "cft adapters K=8 r=8 (routed)"),
    "cft full fine-tuning / plain PyG loop (target >= 1.0)": ("cft full fine-tuning", "plain PyG loop (OGB example GIN-VN)"),
}

BASE_RECIPE = """
seed: 0
data: {source: csv, path: tox21.csv}
backbone: {num_layers: 5, hidden: 300, dropout: 0.5, freeze: true}
adapters: {num_adapters: 4, rank: 8, layers: all}
train: {epochs: 1, batch_size: %d, lr: 0.003, patience: null, max_steps: %d}
eval: {batch_size: 256}
"""


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ----------------------------------------------------------------- children (one measurement each)


def child_cft(overrides: list[str], steps: int, data: Path) -> dict:
    import torch

    from cft.data.dataset import load_dataset
    from cft.files.bundle import load_bundle
    from cft.recipe.load import load_recipe
    from cft.training.inference import predict_logits
    from cft.training.trainer import train_recipe

    with tempfile.TemporaryDirectory() as tmp:
        recipe_path = Path(tmp) / "speed.yaml"
        recipe_path.write_text(BASE_RECIPE % (BATCH, steps))
        recipe = load_recipe(recipe_path, overrides)
        summary = train_recipe(recipe, Path(tmp) / "run", data)
        model, _ = load_bundle(Path(tmp) / "run" / "bundle.safetensors")
        dataset = load_dataset(recipe.data, data, 0)
        subset = dataset.subset("train")
        start = time.perf_counter()
        predict_logits(model, subset, 256, torch.device("cpu"))
        infer = len(subset) / (time.perf_counter() - start)
    return {"train_graphs_per_s": summary["graphs_per_second"], "infer_graphs_per_s": infer, "peak_rss_mib": peak_rss_mib(),
            "trainable": summary["params"]["trainable"], "total": summary["params"]["total"]}


def child_reference(steps: int, data: Path) -> dict:
    import numpy as np
    import pandas as pd
    import torch
    from reference_ginvn import GINVirtualNode, data_list, train_steps
    from torch_geometric.loader import DataLoader

    frame = pd.read_csv(data / "tox21.csv")
    smiles, labels = [], []
    from rdkit import Chem, RDLogger

    RDLogger.DisableLog("rdApp.*")
    for s, y in zip(frame["smiles"], frame.drop(columns=["smiles"]).to_numpy(dtype=np.float32)):
        if Chem.MolFromSmiles(s) is not None:
            smiles.append(s)
            labels.append(y)
    graphs = data_list(smiles, labels)
    torch.manual_seed(0)
    model = GINVirtualNode(num_tasks=labels[0].shape[0])
    loader = DataLoader(graphs, batch_size=BATCH, shuffle=True)
    start = time.perf_counter()
    seen = train_steps(model, loader, steps)
    train = seen / (time.perf_counter() - start)
    model.eval()
    start = time.perf_counter()
    with torch.no_grad():
        for batch in DataLoader(graphs, batch_size=256):
            model(batch)
    infer = len(graphs) / (time.perf_counter() - start)
    return {"train_graphs_per_s": train, "infer_graphs_per_s": infer, "peak_rss_mib": peak_rss_mib()}


def child_epoch(overrides: list[str], data: Path) -> dict:
    """One full epoch (training steps only) of the base recipe with `overrides`."""
    from cft.recipe.load import load_recipe
    from cft.training.trainer import train_recipe

    with tempfile.TemporaryDirectory() as tmp:
        recipe_path = Path(tmp) / "epoch.yaml"
        recipe_path.write_text((BASE_RECIPE % (BATCH, 10**9)).replace("max_steps: 1000000000", "max_steps: null"))
        summary = train_recipe(load_recipe(recipe_path, overrides), Path(tmp) / "run", data)
    return {"epoch_seconds": summary["seconds"]["train"], "train_molecules": round(summary["graphs_per_second"] * summary["seconds"]["train"]),
            "tasks": len(summary["tasks"]), "peak_rss_mib": peak_rss_mib(), "featurise_seconds": summary["seconds"]["featurise"]}


def child_featurise(data: Path) -> dict:
    import pandas as pd

    from cft.data.graphs import featurise

    smiles = pd.read_csv(data / "tox21.csv")["smiles"].tolist()
    _, _, cold, _ = featurise(smiles, use_cache=False)
    featurise(smiles)  # make sure the cache holds it
    _, _, cached, hit = featurise(smiles)
    assert hit
    return {"molecules": len(smiles), "cold_seconds": cold, "cached_seconds": cached, "ratio": cold / cached}


def run_child(kind: str, payload: dict, data: Path, env: dict) -> dict:
    cmd = [sys.executable, __file__, "--child", kind, "--payload", json.dumps(payload), "--data", str(data)]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise RuntimeError(f"{kind} {payload} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------- orchestration


def machine() -> dict:
    import torch

    cpu = platform.processor() or ""
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = bool(subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True).stdout.strip())
    return {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
            "commit": commit + ("+dirty" if dirty else ""), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, got {text!r}")
    return int(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer steps, one repetition, small scaling runs (~5 minutes)")
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--json", type=Path, help="where to write the results (default: benchmarks/results/speed.json, speed_quick.json with --quick)")
    parser.add_argument("--repetitions", type=positive_int, help="interleaved repetitions of each throughput mode (default 3, 1 with --quick)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--payload", default="{}", help=argparse.SUPPRESS)
    args = parser.parse_args()
    data = args.data.resolve()
    if args.json is None:
        args.json = REPO / "benchmarks" / "results" / ("speed_quick.json" if args.quick else "speed.json")

    if args.child:
        payload = json.loads(args.payload)
        handlers = {
            "cft": lambda: child_cft(payload["overrides"], payload["steps"], data),
            "reference": lambda: child_reference(payload["steps"], data),
            "epoch": lambda: child_epoch(payload["overrides"], data),
            "featurise": lambda: child_featurise(data),
        }
        print(json.dumps(handlers[args.child]()))
        return

    env = {**os.environ, "CFT_QUIET": "1", "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    steps, reps = (60, 1) if args.quick else (200, 3)
    reps = args.repetitions or reps
    started = time.perf_counter()
    result = {"machine": machine(), "quick": args.quick, "batch_size": BATCH, "steps": steps, "repetitions": reps,
              "command": " ".join(["python", "benchmarks/speed.py"] + (["--quick"] if args.quick else [])
                                 + ([f"--repetitions {args.repetitions}"] if args.repetitions else []))}
    print(f"machine: {result['machine']}", flush=True)

    # warm the featurisation cache for every dataset used below, then measure featurisation
    result["featurisation"] = run_child("featurise", {}, data, env)
    print(f"featurisation: {result['featurisation']}", flush=True)

    runs: dict[str, list[dict]] = {m: [] for m in MODES}
    for rep in range(reps):
        for mode, overrides in MODES.items():
            if overrides is None:
                runs[mode].append(run_child("reference", {"steps": steps}, data, env))
            else:
                runs[mode].append(run_child("cft", {"overrides": overrides, "steps": steps}, data, env))
            last = runs[mode][-1]
            print(f"[rep {rep + 1}] {mode}: train {last['train_graphs_per_s']:.0f} g/s, infer {last['infer_graphs_per_s']:.0f} g/s, rss {last['peak_rss_mib']:.0f} MiB", flush=True)
    result["modes"] = {
        mode: {key: statistics.median(r[key] for r in values) for key in values[0] if isinstance(values[0][key], (int, float))} | {"all_train": [r["train_graphs_per_s"] for r in values]}
        for mode, values in runs.items()
    }
    m = result["modes"]
    gps = lambda name: m[name]["train_graphs_per_s"]  # noqa: E731
    result["ratios"] = {
        **{name: gps(num) / gps(den) for name, (num, den) in RATIOS.items()},
        "featurisation cold / cached (target >= 20)": result["featurisation"]["ratio"],
    }

    # scaling: epoch time against molecules (MUV) and tasks (ToxCast)
    sizes = [1000, 4000] if args.quick else [1000, 5000, 20000, 93087]
    result["scaling_molecules"] = []
    for n in sizes:
        row = run_child("epoch", {"overrides": ["data.path=muv.csv.gz", f"data.limit={n}", "eval.metric=ap"]}, data, env)
        row["limit"] = n
        result["scaling_molecules"].append(row)
        print(f"MUV {n}: {row}", flush=True)
    import pandas as pd

    toxcast_tasks = [c for c in pd.read_csv(data / "toxcast.csv.gz", nrows=1).columns if c != "smiles"]
    limit = 2000 if args.quick else 8576
    result["scaling_tasks"] = []
    for t in (12, 100, len(toxcast_tasks)):
        tasks = json.dumps(toxcast_tasks[:t])
        row = run_child("epoch", {"overrides": ["data.path=toxcast.csv.gz", f"data.limit={limit}", f"data.tasks={tasks}"]}, data, env)
        result["scaling_tasks"].append(row)
        print(f"ToxCast {t} tasks: {row}", flush=True)
    result["seconds"] = time.perf_counter() - started
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    print(json.dumps(result["ratios"], indent=2))
    print(f"total {result['seconds']:.0f}s; wrote {args.json}")


if __name__ == "__main__":
    main()
