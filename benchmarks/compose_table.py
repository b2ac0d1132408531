"""Markdown tables for docs/composition.md from the files benchmarks/compose_tox21.sh writes.

    python benchmarks/compose_table.py OUT_DIR
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np


def load(path: Path) -> dict:
    return json.loads(path.read_text())["per_task"]


def main(out: Path) -> None:
    nr, sr = load(out / "eval_NR.json"), load(out / "eval_SR.json")
    alone = {**nr, **sr}
    rows = [
        ("NR bundle alone (7 tasks)", "NR"), ("SR bundle alone (5 tasks)", "SR"), ("joint 12-task bundle", "ALL"),
        ("composed NR+SR, defaults, no calibration", "NR_SR"), ("composed NR+SR, calibrated (200 steps)", "NR_SR_cal"),
        ("composed NR+SR, --compose-steps 0", "NR_SR_k0"), ("merged, --mode cat", "NR_SR_cat"), ("merged, --mode linear", "NR_SR_linear"),
    ]
    print("| bundle | NR tasks | SR tasks | all 12 | max abs delta vs its part (NR / SR) |")
    print("|---|---|---|---|---|")
    for label, name in rows:
        path = out / f"eval_{name}.json"
        if not path.exists():
            continue
        res = load(path)
        cell = lambda tasks: f"{np.mean([res[t] for t in tasks]):.4f}" if all(t in res and res[t] is not None for t in tasks) else "–"  # noqa: E731
        both = list(nr) + list(sr)
        delta = "–"
        if all(t in res for t in both) and name not in ("NR", "SR"):
            dn = max(abs(res[t] - alone[t]) for t in nr)
            ds = max(abs(res[t] - alone[t]) for t in sr)
            delta = f"{dn:.4f} / {ds:.4f}"
        print(f"| {label} | {cell(nr)} | {cell(sr)} | {cell(both)} | {delta} |")
    print()
    print("| rule | steps k | threshold g | mix | NR mean delta | NR max abs delta | SR mean delta | SR max abs delta | NR->SR route mass | SR->NR route mass |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for path in sorted(out.glob("eval_sweep_*.json"), key=_sweep_key):
        name = path.name.removeprefix("eval_sweep_").removesuffix(".json")
        rule, k, g, *mix = name.split("_")
        res = load(path)
        routing = json.loads((out / f"routing_sweep_{name}.json").read_text())
        mass = np.mean([layer["route_mass_by_part"] for layer in routing["layers"].values()], axis=0)
        dn = [res[t] - alone[t] for t in nr]
        ds = [res[t] - alone[t] for t in sr]
        print(f"| {rule} | {k[1:]} | {g[1:]} | {mix[0][1:] if mix else '–'} | {np.mean(dn):+.4f} | {np.max(np.abs(dn)):.4f} | "
              f"{np.mean(ds):+.4f} | {np.max(np.abs(ds)):.4f} | {mass[0][1]:.3f} | {mass[1][0]:.3f} |")


def _sweep_key(path: Path) -> tuple:
    parts = path.name.removeprefix("eval_sweep_").removesuffix(".json").split("_")
    return (parts[0] != "residual", parts[0], int(parts[1][1:]), float(parts[2][1:]), float(parts[3][1:]) if len(parts) > 3 else 0.0)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
