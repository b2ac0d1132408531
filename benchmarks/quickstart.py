"""The quickstart, measured: `cft train recipes/quickstart.yaml` as a user runs it, timed from outside.

    python benchmarks/quickstart.py [--json benchmarks/results/quickstart.json] [--threads N]

Runs the real CLI in a subprocess with an empty cache folder (featurisation and the masking
pretrain are part of the time, as on a fresh machine) and writes one JSON file: the machine and
commit, the command, the wall clock and peak RSS of the whole run, the seconds the run folder's
`summary.json` attributes to each stage, and its valid/test score, best epoch and parameter counts.
README.md's quickstart line quotes this file.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from provenance import machine  # noqa: E402
from quality import _code_commit  # noqa: E402

from cft.files.atomic import atomic_write_json  # noqa: E402

RECIPE = "recipes/quickstart.yaml"


def measure(threads: int | None) -> dict:
    """One quickstart run in a fresh cache and run folder; what a user sees, and what it scored."""
    with tempfile.TemporaryDirectory(prefix="cft-quickstart-") as scratch:
        run = Path(scratch) / "run"
        env = {**os.environ, "CFT_CACHE_DIR": str(Path(scratch) / "cache"), "CFT_QUIET": "1"}
        if threads:
            env["OMP_NUM_THREADS"] = str(threads)
        command = [sys.executable, "-m", "cft", "train", RECIPE, "-o", str(run)]
        started = time.perf_counter()
        done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, check=False)
        wall = time.perf_counter() - started
        if done.returncode != 0:
            raise SystemExit(f"quickstart failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
        summary = json.loads((run / "summary.json").read_text())
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # Linux: KiB, the largest child (the only one)
    metric = summary["metric"]
    return {
        "command": f"cft train {RECIPE}" + (f" (OMP_NUM_THREADS={threads})" if threads else ""),
        "wall_seconds": round(wall, 1),
        "peak_rss_mib": round(peak_kib / 1024),
        "pretrain_seconds": summary.get("backbone", {}).get("seconds"),  # the masking pretrain stage (None when cached)
        "stage_seconds": summary.get("seconds", {}),  # featurisation, data preparation, training (summary.json's)
        "metric": metric,
        f"valid_{metric}": summary["valid"]["mean"],
        f"test_{metric}": summary["test"]["mean"],
        "best_epoch": summary["best_epoch"],
        "epochs_run": summary.get("epochs_run"),
        "params": summary["params"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "quickstart.json")
    parser.add_argument("--threads", type=int, help="OMP_NUM_THREADS for the run (default: torch's own choice, as a user gets)")
    args = parser.parse_args()
    result = {"machine": machine(), "code_commit": _code_commit(), **measure(args.threads)}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.json, result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
