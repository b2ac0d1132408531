"""How informative the routes are after training: the routing entropy per insertion layer at the
best validation epoch of every run under a folder of cft runs (metrics.jsonl, written by `cft train`).

    python benchmarks/routing_entropy.py benchmarks/results/routing [--json benchmarks/results/routing_entropy.json]

A run's row: its folder (relative to the root given), the best epoch, valid score there, and per
layer the mean routing entropy H (nats; ln K when every task routes uniformly) and the fraction
of active routes. Uniform routes (H = ln K) mean the gate gives every task the same mixture.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path


def best_epoch_routing(metrics: Path) -> dict | None:
    """The metrics line of the best validation epoch (the first of equal ones), or None without
    any (a run with no adapters logs an empty `routing`)."""
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    scored = [r for r in rows if r.get("routing") and any(k.startswith("valid_") for k in r)]
    if not scored:
        return None
    key = next(k for k in scored[0] if k.startswith("valid_"))
    best = max(scored, key=lambda r: (r[key], -r["epoch"]))
    entropies = {layer: v["entropy"] for layer, v in best["routing"].items()}
    return {"best_epoch": best["epoch"], key: best[key], "entropy": entropies,
            "active_fraction": {layer: v["active_fraction"] for layer, v in best["routing"].items()},
            "mean_entropy": statistics.mean(entropies.values())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", type=Path)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rows = []
    for metrics in sorted(args.root.rglob("metrics.jsonl")):
        recipe = metrics.parent / "recipe.yaml"
        row = best_epoch_routing(metrics)
        if row is None or not recipe.exists():
            continue
        text = recipe.read_text()
        k = next((int(line.split(":")[1]) for line in text.splitlines() if line.strip().startswith("num_adapters:")), None)
        rows.append({"run": str(metrics.parent.relative_to(args.root)), "num_adapters": k, "ln_K": math.log(k) if k else None,
                     "finished": (metrics.parent / "summary.json").exists(), **row})
        print(f"{rows[-1]['run']:60s} K={k} best epoch {row['best_epoch']:3d}  mean H {row['mean_entropy']:.3f} (ln K {math.log(k):.3f})  "
              + " ".join(f"{layer}:{h:.2f}" for layer, h in row["entropy"].items()))
    if args.json:
        tmp = args.json.with_name(f".{args.json.name}.tmp")
        tmp.write_text(json.dumps({"root": str(args.root), "rows": rows}, indent=2))
        tmp.replace(args.json)


if __name__ == "__main__":
    main()
