"""Inference graphs/s of the Tox21 recipe's model against the evaluation batch size, on this machine.

Validation runs once per epoch, and `cft eval` / `cft predict` run the same loop
(`cft.training.inference.predict_logits`, batches sliced from the compact store), so the batch
size it uses is part of every run's wall clock. One process trains `recipes/tox21.yaml` for one
step on the committed benchmark backbone (the adapters' weights do not change the arithmetic),
then times `predict_logits` over one of Tox21's splits (the training molecules by default; the
validation molecules are what every epoch's validation runs over) at each batch size, the sizes
interleaved within each repetition so that a load on the machine falls on all of them alike.

    python benchmarks/eval_batch.py [--batch-sizes 32,64,128,256,512,1024] [--repetitions 5] [--threads 2]
        [--device cpu] [--split train|valid|test] [--limit N] [--json benchmarks/results/eval_batch.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from quality import recipes_backbone  # noqa: E402

BACKBONE = recipes_backbone()


def measure(args: argparse.Namespace) -> dict:
    import torch

    from cft.data.dataset import load_dataset
    from cft.data.graphs import GraphDataset
    from cft.files.bundle import load_bundle
    from cft.recipe.load import load_recipe
    from cft.training.inference import predict_logits
    from cft.training.trainer import train_recipe

    device = torch.device(args.device)
    overrides = ["backbone.pretrain=null", "backbone.pretrained=null", f"backbone.path={BACKBONE}", "train.epochs=1", "train.max_steps=1", f"train.threads={args.threads}"]
    recipe = load_recipe(REPO / "recipes" / "tox21.yaml", overrides)
    with tempfile.TemporaryDirectory() as tmp:
        train_recipe(recipe, Path(tmp) / "run", args.data)
        model, _ = load_bundle(Path(tmp) / "run" / "bundle.safetensors")
    model.to(device)
    molecules = load_dataset(recipe.data, args.data, recipe.seed).subset(args.split)
    if args.limit:
        molecules = GraphDataset(molecules.store, molecules.y, molecules.indices_[: args.limit])
    predict_logits(model, molecules, args.batch_sizes[0], device)  # warm-up: allocator, kernels
    seconds: dict[int, list[float]] = {b: [] for b in args.batch_sizes}
    for rep in range(args.repetitions):
        for b in args.batch_sizes:
            start = time.perf_counter()
            predict_logits(model, molecules, b, device)
            seconds[b].append(time.perf_counter() - start)
        print(f"[rep {rep + 1}] " + ", ".join(f"{b}: {len(molecules) / seconds[b][-1]:.0f} g/s" for b in args.batch_sizes), file=sys.stderr)
    rows = [{"batch_size": b, "seconds": s, "graphs_per_s": [len(molecules) / t for t in s],
             "median_graphs_per_s": len(molecules) / statistics.median(s)} for b, s in seconds.items()]
    return {"molecules": len(molecules), "split": args.split, "threads": args.threads, "device": str(device), "repetitions": args.repetitions, "rows": rows}


def table(result: dict) -> str:
    """Markdown: median graphs/s per batch size and each one's ratio to the fastest."""
    best = max(r["median_graphs_per_s"] for r in result["rows"])
    split = {"train": "training", "valid": "validation", "test": "test"}[result.get("split", "train")]
    lines = [f"Tox21's {result['molecules']:,} {split} molecules, recipes/tox21.yaml's model, {result['threads']} thread(s) on "
             f"{result['device']}, median of {result['repetitions']} interleaved repetitions.", "",
             "| eval batch size | inference graphs/s | per repetition | / fastest |", "|---:|---:|---:|---:|"]
    for r in result["rows"]:
        per = ", ".join(f"{g:.0f}" for g in r["graphs_per_s"])
        lines.append(f"| {r['batch_size']} | {r['median_graphs_per_s']:.0f} | {per} | {r['median_graphs_per_s'] / best:.2f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--batch-sizes", default="32,64,128,256,512,1024", help="comma-separated evaluation batch sizes")
    parser.add_argument("--repetitions", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--split", choices=["train", "valid", "test"], default="train", help="the molecules to predict (default: train)")
    parser.add_argument("--limit", type=int, help="the first N training molecules only (a check, not a measurement)")
    parser.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "eval_batch.json")
    args = parser.parse_args()
    try:
        args.batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    except ValueError:
        parser.error(f"--batch-sizes: comma-separated whole numbers, got {args.batch_sizes!r}")
    if min(args.batch_sizes) < 1 or args.repetitions < 1 or args.threads < 1:
        parser.error("--batch-sizes, --repetitions and --threads must be at least 1")
    import torch
    from provenance import machine

    torch.set_num_threads(args.threads)  # before machine(), which records the thread count
    result = {"machine": machine(), "command": "python benchmarks/eval_batch.py " + " ".join(sys.argv[1:]), **measure(args)}
    tmp = args.json.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2))
    tmp.replace(args.json)
    print(table(result))


if __name__ == "__main__":
    main()
