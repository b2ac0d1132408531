"""Markdown tables for docs/composition.md from the files benchmarks/compose_tox21.sh writes.

    python benchmarks/compose_table.py OUT_DIR [--json RESULT.json] [--commit REV]

--commit: the commit the runs in OUT_DIR were made at (default HEAD), recorded in the result file
with the last commit before it that changed cft/ or recipes/ (the code the runs ran).

The residual rule's mix is chosen on the **validation** split: the largest mix whose largest
per-task ROC-AUC change against the task's own bundle stays within TOLERANCE on valid; only then
is its test change reported. The test split never chooses anything.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np


def load(path: Path) -> dict:
    return json.loads(path.read_text())["per_task"]


TOLERANCE = 0.005


def choose_mix(out: Path) -> dict | None:
    """{"mix", "valid_max_abs_delta", "test_max_abs_delta", "candidates"} for the residual rule at k=1, g=0.1."""
    if not (out / "valid_NR.json").exists():
        return None
    alone_valid = {**load(out / "valid_NR.json"), **load(out / "valid_SR.json")}
    alone_test = {**load(out / "eval_NR.json"), **load(out / "eval_SR.json")}
    candidates = []
    for path in sorted(out.glob("valid_sweep_residual_k1_g0.1_m*.json")):
        name = path.name.removeprefix("valid_").removesuffix(".json")
        mix = float(name.rsplit("_m", 1)[1])
        valid, test = load(path), load(out / f"eval_{name}.json")
        dv = max(abs(valid[t] - alone_valid[t]) for t in alone_valid if valid.get(t) is not None and alone_valid[t] is not None)
        dt = max(abs(test[t] - alone_test[t]) for t in alone_test if test.get(t) is not None and alone_test[t] is not None)
        candidates.append({"mix": mix, "valid_max_abs_delta": dv, "test_max_abs_delta": dt})
    within = [c for c in candidates if c["valid_max_abs_delta"] <= TOLERANCE]
    best = max(within, key=lambda c: c["mix"]) if within else None
    return {"tolerance": TOLERANCE, "chosen": best, "candidates": sorted(candidates, key=lambda c: c["mix"])}


def main(out: Path, json_path: Path | None = None, commit: str = "HEAD") -> None:
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
    sweep = {}
    for path in sorted(out.glob("eval_sweep_*.json"), key=_sweep_key):
        name = path.name.removeprefix("eval_sweep_").removesuffix(".json")
        rule, k, g, *mix = name.split("_")
        res = load(path)
        routing = json.loads((out / f"routing_sweep_{name}.json").read_text())
        mass = np.mean([layer["route_mass_by_part"] for layer in routing["layers"].values()], axis=0)
        dn = [res[t] - alone[t] for t in nr]
        ds = [res[t] - alone[t] for t in sr]
        valid_path = out / f"valid_sweep_{name}.json"
        sweep[name] = {"rule": rule, "steps": int(k[1:]), "threshold": float(g[1:]), "mix": float(mix[0][1:]) if mix else None,
                       "test_per_task": res, "valid_per_task": load(valid_path) if valid_path.exists() else None,
                       "route_mass_by_part": mass.tolist()}
        print(f"| {rule} | {k[1:]} | {g[1:]} | {mix[0][1:] if mix else '–'} | {np.mean(dn):+.4f} | {np.max(np.abs(dn)):.4f} | "
              f"{np.mean(ds):+.4f} | {np.max(np.abs(ds)):.4f} | {mass[0][1]:.3f} | {mass[1][0]:.3f} |")

    choice = choose_mix(out)
    if choice is not None:
        c = choice["chosen"]
        print()
        print(f"residual mix chosen on valid (largest with max |delta| <= {TOLERANCE}): "
              + (f"{c['mix']} (valid {c['valid_max_abs_delta']:.4f}, test {c['test_max_abs_delta']:.4f})" if c else "none within the tolerance"))
    if json_path is not None:
        per_bundle = {name: load(out / f"eval_{name}.json") for _, name in rows if (out / f"eval_{name}.json").exists()}
        valid = {name: load(out / f"valid_{name}.json") for name in ("NR", "SR") if (out / f"valid_{name}.json").exists()}
        result = {"out_dir": str(out), "commit": _commit(commit), "code_commit": _commit(commit, "cft", "recipes"), "test_per_task": per_bundle,
                  "valid_per_task": valid, "sweep": sweep, "mix_choice": choice}
        tmp = json_path.with_name(f".{json_path.name}.tmp")
        tmp.write_text(json.dumps(result, indent=2))
        tmp.replace(json_path)


def _commit(rev: str, *paths: str) -> str:
    """`rev` abbreviated; with paths, the last commit up to `rev` that changed them."""
    import subprocess

    cmd = ["git", "log", "-1", "--format=%h", rev, "--", *paths] if paths else ["git", "rev-parse", "--short", rev]
    done = subprocess.run(cmd, cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True)
    return done.stdout.strip()


def _sweep_key(path: Path) -> tuple:
    parts = path.name.removeprefix("eval_sweep_").removesuffix(".json").split("_")
    return (parts[0] != "residual", parts[0], int(parts[1][1:]), float(parts[2][1:]), float(parts[3][1:]) if len(parts) > 3 else 0.0)


if __name__ == "__main__":
    args = sys.argv[1:]
    target = Path(args[args.index("--json") + 1]) if "--json" in args else None
    main(Path(args[0]), target, args[args.index("--commit") + 1] if "--commit" in args else "HEAD")
