"""Quality benchmark: cft's methods side by side on Tox21, ToxCast and MUV (scaffold split).

    python benchmarks/quality.py [--quick | --protocol routing | --protocol levers] [--data ../shared/data] [--backbone FILE] [--jobs 2]

`--protocol methods` (the default) ranks every method at short, equal budgets; `--protocol routing`
compares the task-specific read-out under the label and the identity prior with the shared mixture
read-out, trained to convergence (up to 50 epochs, early stopping with patience 10, 3 seeds) on
ToxCast and Tox21, and writes benchmarks/results/routing.json after every finished run.
`--protocol levers` trains the levers against uniform routes under the label prior (APPNP restart,
top-k sparsification, PairNorm) beside the plain label and identity priors on ToxCast, one seed,
the routing study's budget, into benchmarks/results/routing_levers.json. Every row records the
mean routing entropy at the best validation epoch (ln K when every task routes uniformly).

Every run is a real `cft train` of recipes/<dataset>.yaml with `--set` overrides, in its own
run folder under benchmarks/results/quality/<dataset>/<method>/seed<k>; finished runs are
skipped, so an interrupted benchmark continues where it stopped. One backbone serves every
method: the recipes' own, the GIN-VN 300x5 shipped with cft (attribute masking on the HIV
molecules, no labels), unless --backbone names another file; --quick pretrains a small one
(3 x 64) once with cft's own cached pretrain stage.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

METHODS = {
    "GIN-VN from scratch": ["backbone.path=null", "backbone.pretrained=null", "backbone.freeze=false", "adapters.enabled=false", "train.lr=0.001"],
    "full fine-tuning": ["backbone.freeze=false", "adapters.enabled=false", "train.lr=0.001"],
    "head only": ["adapters.enabled=false"],
    "one adapter (K=1, no routing)": ["adapters.num_adapters=1", "routing.mode=uniform"],
    "uniform mixture (no gate)": ["routing.mode=uniform"],  # the recipe's K: 4 on Tox21 and MUV, 8 on ToxCast
    "routing, identity prior": ["prior.source=identity"],
    "full method (label prior)": [],
}

# The routed adapters these studies compare (the shipped recipes' adapters until they took one linear
# adapter on both GIN MLP Linears): r=8, GELU, on the layer outputs, K per dataset. Every method
# starts from them (`routed_overrides`), so the routing variants stay routing variants. They adapt
# the layer outputs, not the virtual node's MLPs (which recipes/tox21.yaml adapts beside its GIN MLPs').
ROUTED = ["adapters.placement=output", "adapters.activation=gelu", "adapters.rank=8", "adapters.virtual_node=false"]
ROUTED_K = {"tox21": 4, "toxcast": 8, "muv": 4, "esol": 4}


def routed_overrides(dataset: str) -> list[str]:
    return ROUTED + [f"adapters.num_adapters={ROUTED_K[dataset]}"]


# (recipe, epochs, seeds) per dataset, sized so that the full suite fits in about 2 hours on 2 cores
# (2 jobs x 1 thread): measured single-thread epochs are ~45 s on Tox21, ~90 s on ToxCast and
# ~400 s on MUV, so 21 runs per seed cost 16 min (Tox21, 6 epochs), 32 min (ToxCast, 2 epochs) and
# 47 min (MUV, 1 epoch) of one core. MUV gets one seed: three would not fit. These budgets are far
# from converged (recipes/tox21.yaml's own 30 epochs take ~25 min per run): the table ranks
# methods at equal, short budgets, it does not reproduce the paper's numbers.
FULL = {"tox21": ("recipes/tox21.yaml", 6, 3), "toxcast": ("recipes/toxcast.yaml", 2, 3), "muv": ("recipes/muv.yaml", 1, 1)}
QUICK = {"tox21": ("recipes/tox21.yaml", 2, 1)}

# the routing study: does a task's own route (and the prior that shapes it) matter once training converges?
ROUTING_METHODS = {
    "task read-out, label prior": ["routing.readout=task", "prior.source=labels"],
    "task read-out, identity prior": ["routing.readout=task", "prior.source=identity"],
    "mixture read-out, label prior": ["routing.readout=mixture", "prior.source=labels"],
}
ROUTING = {"toxcast": ("recipes/toxcast.yaml", 50, 3), "tox21": ("recipes/tox21.yaml", 50, 3)}
ROUTING_PATIENCE = 10
# levers on the label prior's uniform routes (ToxCast, the study's protocol, one seed): which keeps
# routes informative without losing validation ROC-AUC? Each row records the routing entropy.
LEVER_METHODS = {
    "label prior": ["routing.readout=task", "prior.source=labels"],
    "identity prior": ["routing.readout=task", "prior.source=identity"],
    "label prior, pairnorm": ["routing.readout=task", "prior.source=labels", "prior.norm=pairnorm"],
    "label prior, restart 0.5": ["routing.readout=task", "prior.source=labels", "prior.restart=0.5"],
    "label prior, top_k 10": ["routing.readout=task", "prior.source=labels", "prior.top_k=10"],
}
LEVERS = {"toxcast": ("recipes/toxcast.yaml", 50, 1)}
QUICK_LIMIT = 1500


def shared_overrides(backbone: Path, extra: list[str]) -> list[str]:
    """What every run shares: the one backbone file instead of a shipped backbone or a pretrain stage. The file's
    architecture must be the recipe's, so --quick's backbone.hidden/num_layers stay; only its
    pretrain settings go (they made the file)."""
    return ["backbone.pretrain=null", "backbone.pretrained=null", f"backbone.path={backbone}"] + [e for e in extra if not e.startswith("backbone.pretrain.")]


def method_overrides(method: str, shared: list[str], seed: int, epochs: int, threads: int, methods: dict = METHODS, patience: int | None = None) -> list[str]:
    """The --set list of one run. `--set` is last-wins, so the method's own overrides come after
    the shared ones: "GIN-VN from scratch" must undo the shared `backbone.path` (an earlier
    ordering silently trained every scratch run from the pretrained backbone)."""
    return shared + methods[method] + [f"seed={seed}", f"train.epochs={epochs}", f"train.threads={threads}", f"train.patience={patience if patience else 'null'}"]


def run_one(dataset: str, recipe: str, method: str, seed: int, epochs: int, extra: list[str], out: Path, data: Path, threads: int,
            methods: dict = METHODS, patience: int | None = None) -> dict:
    folder = out / dataset / method.replace(" ", "_").replace(",", "").replace("(", "").replace(")", "").replace("=", "") / f"seed{seed}"
    summary_path = folder / "summary.json"
    if not summary_path.exists():
        sets = method_overrides(method, extra, seed, epochs, threads, methods, patience)
        cmd = [sys.executable, "-m", "cft", "train", str(REPO / recipe), "--data-root", str(data), "-o", str(folder)]
        cmd += sum((["--set", s] for s in sets), [])
        if (folder / "checkpoint.pt").exists():
            cmd.append("--resume")
        elif folder.exists():
            cmd.append("--overwrite")
        env = {**os.environ, "CFT_QUIET": "1", "OMP_NUM_THREADS": str(threads)}
        result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env)
        if result.returncode != 0:
            return {"dataset": dataset, "method": method, "seed": seed, "error": result.stderr.strip().splitlines()[-1:] or ["?"]}
    s = json.loads(summary_path.read_text())
    from routing_entropy import best_epoch_routing

    routes = best_epoch_routing(folder / "metrics.jsonl") if (folder / "metrics.jsonl").exists() else None
    return {"routing_entropy": routes["mean_entropy"] if routes else None, "dataset": dataset, "method": method, "seed": seed, "metric": s["metric"], "valid": s["valid"]["mean"], "test": s["test"]["mean"],
            "best_epoch": s["best_epoch"], "epochs": s["epochs_run"], "trainable": s["params"]["trainable"], "total": s["params"]["total"],
            "train_seconds": s["seconds"]["train"], "graphs_per_second": s["graphs_per_second"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--protocol", choices=("methods", "routing", "levers"), default="methods", help="which study to run (see above)")
    parser.add_argument("--quick", action="store_true", help="Tox21 only, 1 seed, 2 epochs, small backbone, 1,500 molecules (~10 minutes)")
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "quality")
    parser.add_argument("--backbone", type=Path, help="backbone file shared by every method (default: pretrain it with cft, cached)")
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time (each gets cores // jobs threads)")
    parser.add_argument("--datasets", help="comma-separated subset of the protocol's datasets (default: all); the result file keeps "
                        "the rows of the other datasets it already holds")
    parser.add_argument("--threads", type=int, help="torch threads per run (default: cores // jobs); 1 when another benchmark shares the cores")
    args = parser.parse_args()
    routing = args.protocol in ("routing", "levers")
    protocol = {"routing": ROUTING, "levers": LEVERS}.get(args.protocol) or (QUICK if args.quick else FULL)
    methods = {"routing": ROUTING_METHODS, "levers": LEVER_METHODS}.get(args.protocol, METHODS)
    patience = ROUTING_PATIENCE if routing else None
    if routing and args.out == REPO / "benchmarks" / "results" / "quality":
        args.out = args.out.parent / ("routing" if args.protocol == "routing" else "routing_levers")
    if args.datasets:
        wanted = args.datasets.split(",")
        unknown = [d for d in wanted if d not in protocol]
        if unknown:
            parser.error(f"--datasets: {', '.join(unknown)} not in the protocol ({', '.join(protocol)})")
        protocol = {d: protocol[d] for d in wanted}
    data, out = args.data.resolve(), args.out.resolve()
    threads = args.threads or max(1, (os.cpu_count() or 1) // args.jobs)
    started = time.perf_counter()
    extra = []
    if args.quick:
        extra = ["backbone.hidden=64", "backbone.num_layers=3", "backbone.pretrain.epochs=1", "backbone.pretrain.data.limit=4000", f"data.limit={QUICK_LIMIT}"]
    backbone = args.backbone.resolve() if args.backbone else None
    if backbone is None and not args.quick:
        backbone = recipes_backbone()
    elif backbone is None:
        # --quick: a small backbone, pretrained once (cft's own cached pretrain stage) and shared
        folder = out / "backbone"
        stage = ["backbone.pretrained=null", "backbone.pretrain.method=masking", "backbone.pretrain.data.source=csv", "backbone.pretrain.data.path=HIV.csv.gz"]
        cmd = [sys.executable, "-m", "cft", "train", str(REPO / "recipes" / "tox21.yaml"), "--data-root", str(data), "-o", str(folder),
               "--overwrite", "--set", "train.epochs=1", "--set", "train.max_steps=1", *sum((["--set", s] for s in stage + extra), [])]
        subprocess.run(cmd, cwd=REPO, check=True, env={**os.environ, "CFT_QUIET": "1"})
        backbone = folder / "backbone.safetensors"
    base = shared_overrides(backbone, extra)
    # seed by seed, so that a stopped benchmark leaves every method with the same seeds done
    max_seeds = max(v[2] for v in protocol.values())
    jobs = [(name, recipe, method, seed, epochs) for seed in range(max_seeds) for name, (recipe, epochs, seeds) in protocol.items() if seed < seeds for method in methods]
    sys.path.insert(0, str(REPO / "benchmarks"))
    from provenance import machine

    command = " ".join(["python", "benchmarks/quality.py"] + ([f"--protocol {args.protocol}"] if routing else []) + (["--quick"] if args.quick else [])
                       + ([f"--datasets {args.datasets}"] if args.datasets else []))
    target = out.parent / (f"{out.name}.json" if routing else "quality_quick.json" if args.quick else "quality.json")
    rows: list[dict] = []
    # rows of datasets this invocation does not run stay in the file (a study run dataset by dataset)
    kept, kept_protocol = [], {}
    if target.exists():
        previous = json.loads(target.read_text())
        kept = [r for r in previous.get("rows", []) if r["dataset"] not in protocol]
        kept_protocol = {k: v for k, v in previous.get("protocol", {}).items() if k not in protocol}

    def write(partial: bool) -> dict:
        """The result file, rewritten after every finished run (written to a temporary name, then renamed)."""
        everything = kept + rows
        result = {"machine": machine(),
                  "protocol": {**kept_protocol, **{k: {"recipe": v[0], "epochs": v[1], "seeds": v[2], "patience": patience} for k, v in protocol.items()}},
                  "backbone": str(backbone), "quick": args.quick, "commit": _commit(), "code_commit": _code_commit(), "partial": partial, "runs_planned": len(jobs),
                  "rows": sorted(everything, key=lambda r: (r["dataset"], r["method"], r["seed"])), "summary": summarise(everything),
                  "seconds": time.perf_counter() - started, "jobs": args.jobs, "train_seconds_all_runs": sum(r.get("train_seconds", 0.0) for r in rows),
                  "command": command}
        tmp = target.with_name(f".{target.name}.tmp")
        tmp.write_text(json.dumps(result, indent=2))
        tmp.replace(target)
        return result

    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = [pool.submit(run_one, j[0], j[1], j[2], j[3], j[4], base + routed_overrides(j[0]), out, data, threads, methods, patience) for j in jobs]
        for future in as_completed(futures):
            rows.append(future.result())
            write(partial=len(rows) < len(jobs))
    result = write(partial=False)
    summary = result["summary"]
    for key, s in summary.items():
        dataset, method = key.split("|")
        print(f"{dataset:8s} {method:34s} test {s['test_mean']:.4f} ± {s['test_std']:.4f}  valid {s['valid_mean']:.4f}  trainable {s['trainable']:,}  {s['train_seconds']:.0f}s")
    print(f"total {result['seconds']:.0f}s")


def recipes_backbone() -> Path:
    """The file of the shipped backbone recipes/tox21.yaml names (every dataset recipe names the same one)."""
    from cft.files.pretrained import shipped_path
    from cft.recipe.load import load_recipe

    return shipped_path(load_recipe(REPO / "recipes" / "tox21.yaml").backbone.pretrained)


def _commit() -> str:
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "cft", "recipes"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    return done.stdout.strip() + ("+dirty" if dirty else "")


def _code_commit() -> str:
    """The last commit that changed cft/ or recipes/: runs trained at any later commit ran this code."""
    done = subprocess.run(["git", "log", "-1", "--format=%h", "--", "cft", "recipes"], cwd=REPO, capture_output=True, text=True)
    return done.stdout.strip()


def summarise(rows: list[dict]) -> dict:
    groups: dict = {}
    for r in rows:
        if "error" in r:
            print(f"FAILED {r['dataset']} {r['method']} seed {r['seed']}: {r['error']}")
            continue
        groups.setdefault((r["dataset"], r["method"]), []).append(r)
    out = {}
    for key, rs in groups.items():
        rs = sorted(rs, key=lambda r: r["seed"])  # best_epochs in seed order
        tests, valids = [r["test"] for r in rs], [r["valid"] for r in rs]
        out[key] = {"metric": rs[0]["metric"], "seeds": len(rs), "test_mean": statistics.mean(tests), "test_std": statistics.pstdev(tests),
                    "test_sample_std": statistics.stdev(tests) if len(tests) > 1 else None, "best_epochs": [r["best_epoch"] for r in rs],
                    "valid_mean": statistics.mean(valids), "valid_sample_std": statistics.stdev(valids) if len(valids) > 1 else None,
                    "trainable": rs[0]["trainable"], "total": rs[0]["total"],
                    "train_seconds": statistics.mean(r["train_seconds"] for r in rs), "graphs_per_second": statistics.mean(r["graphs_per_second"] for r in rs)}
    return {f"{dataset}|{method}": v for (dataset, method), v in out.items()}


if __name__ == "__main__":
    main()
