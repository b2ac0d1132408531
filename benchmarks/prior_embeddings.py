"""What the prior's propagation does to the task embeddings of trained bundles: their RMS norm and
their spread across tasks before (E_0) and after (E~) propagation, and the routing entropy.

    python benchmarks/prior_embeddings.py RUN_OR_BUNDLE [...] [--json benchmarks/results/prior_embeddings.json]

Per bundle part: rms(X) = sqrt(mean_t ||X_t||^2), the centred rms(X - mean_t X) (what tells tasks
apart) and the relative spread, their ratio (1 for embeddings with no common part; near 0 when
every task has nearly the same embedding), for X = E_0 (`task_embed`) and X = E~ (`propagated_embeddings`), and
the mean routing entropy of the routes E~ gives (ln K when uniform). Reads the bundle only (no
backbone, no data).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch


def rms(x: torch.Tensor) -> float:
    return float(x.pow(2).sum(-1).mean().sqrt())


def relative_spread(x: torch.Tensor) -> float:
    return rms(x - x.mean(0, keepdim=True)) / rms(x)


def describe(path: Path) -> list[dict]:
    from cft.files.bundle import load_bundle_shell
    from cft.nn.routing import routing_entropy

    bundle = path / "bundle.safetensors" if path.is_dir() else path
    model, _ = load_bundle_shell(bundle)
    rows = []
    with torch.no_grad():
        for part in model.router.parts:
            propagated = part.propagated_embeddings()
            if propagated is None:
                continue
            routes = part.routes(propagated)
            e0 = part.task_embed
            rows.append({"bundle": str(bundle), "part": part.spec.name, "tasks": int(e0.shape[0]), "num_adapters": part.spec.num_adapters,
                         "prior_steps": part.spec.prior_steps, "prior_restart": part.spec.prior_restart, "prior_norm": part.spec.prior_norm,
                         "rms_E0": rms(e0), "rms_propagated": rms(propagated), "centred_rms_E0": rms(e0 - e0.mean(0)),
                         "centred_rms_propagated": rms(propagated - propagated.mean(0)), "spread_E0": relative_spread(e0),
                         "spread_propagated": relative_spread(propagated),
                         "mean_routing_entropy": sum(float(routing_entropy(r)) for r in routes.values()) / len(routes),
                         "ln_K": math.log(part.spec.num_adapters)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundles", nargs="+", type=Path)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rows = [row for path in args.bundles for row in describe(path)]
    for r in rows:
        print(f"{r['bundle']} [{r['part']}]: rms E0 {r['rms_E0']:.3f} -> {r['rms_propagated']:.3f}; centred {r['centred_rms_E0']:.3f} -> {r['centred_rms_propagated']:.3f}; spread {r['spread_E0']:.3f} -> "
              f"{r['spread_propagated']:.3f}; routing entropy {r['mean_routing_entropy']:.3f} of ln K = {r['ln_K']:.3f}")
    if args.json:
        tmp = args.json.with_name(f".{args.json.name}.tmp")
        tmp.write_text(json.dumps({"command": "python benchmarks/prior_embeddings.py " + " ".join(map(str, args.bundles)), "rows": rows}, indent=2))
        tmp.replace(args.json)


if __name__ == "__main__":
    main()
