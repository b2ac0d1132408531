"""Do the experts a trained ToxCast bundle's tasks choose follow the assay families? For each run
given, the expert gates (the task read-out's last insertion layer; the last layer otherwise) of
its bundle: which adapter is each task's largest route, the count per assay family (the task
name's prefix before the first `_`: ATG, NVS, BSK, TOX21, ...), and the normalised mutual
information between family and chosen adapter against the same with the choices shuffled over
the tasks (20 permutations): 0 when the choice says nothing about the family.

    python benchmarks/route_families.py benchmarks/results/peers/toxcast/adapters/seed0 [RUN ...]
        [--json benchmarks/results/route_families.json]

No training: reads each run's bundle through `cft.views.routing.load_report` (what `cft
inspect-routing` shows). The families are a property of the task names ToxCast uses, not of cft.
"""

from __future__ import annotations

import argparse
import collections
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

PERMUTATIONS = 20


def family(task: str) -> str:
    return task.split("_", 1)[0]


def family_table(tasks: list[str], routes: np.ndarray, seed: int = 0) -> dict:
    """routes [T, K] -> per family the number of its tasks whose largest route is each adapter,
    the NMI between family and chosen adapter, and its mean over shuffled choices."""
    from sklearn.metrics import normalized_mutual_info_score

    chosen = routes.argmax(axis=1)
    families = [family(t) for t in tasks]
    counts = {f: np.bincount(chosen[[i for i, g in enumerate(families) if g == f]], minlength=routes.shape[1]).tolist()
              for f, _ in collections.Counter(families).most_common()}
    rng = np.random.default_rng(seed)
    shuffled = [normalized_mutual_info_score(families, rng.permutation(chosen)) for _ in range(PERMUTATIONS)]
    return {"tasks": len(tasks), "adapters": int(routes.shape[1]), "chosen": int(len(set(chosen.tolist()))),
            "per_adapter": np.bincount(chosen, minlength=routes.shape[1]).tolist(), "families": counts,
            "nmi": float(normalized_mutual_info_score(families, chosen)), "nmi_shuffled": float(np.mean(shuffled))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="cft run folders or bundles")
    parser.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "route_families.json")
    args = parser.parse_args()

    from provenance import machine
    from quality import _code_commit, _commit

    from cft.files.atomic import atomic_write_json
    from cft.views.routing import load_report

    rows = []
    for run in args.runs:
        report = load_report(run)
        layer = report.expert_layer if report.expert_layer is not None else max(report.layers)
        row = {"run": str(run), "layer": int(layer), **family_table(report.tasks, np.asarray(report.routes[layer]))}
        rows.append(row)
        top = ", ".join(f"{f} {row['families'][f]}" for f in list(row["families"])[:5])
        print(f"{run}: layer {layer}, {row['chosen']} of {row['adapters']} adapters chosen {row['per_adapter']}; "
              f"NMI(family, adapter) {row['nmi']:.3f} (shuffled {row['nmi_shuffled']:.3f}); {top}")
    atomic_write_json(args.json, {"machine": machine(), "commit": _commit(), "code_commit": _code_commit(),
                                  "command": "python benchmarks/route_families.py " + " ".join(str(r) for r in args.runs), "rows": rows})
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
