"""How good is a frozen backbone? Its task heads (and optionally the default adapters) trained on it,
several seeds, on the peers benchmark's split file: one table row per backbone file.

    python benchmarks/backbone_probe.py BACKBONE.safetensors [BACKBONE ...] [--seeds 3] [--methods head,adapters]
                                        [--dataset tox21] [--jobs 1] [--threads 1] [--json FILE] [--limit N --epochs E]

`head` is the head-only baseline (`adapters.enabled=false` on the frozen backbone): since the whole
frozen backbone is cached per molecule, a run costs about a minute of one core on Tox21, so three
seeds of several candidate backbones (pretraining objectives, epochs, dropout, BatchNorm statistics)
compare in minutes. A better head-only score is a lead, not a result: `adapters` (the dataset's
recipe, ~10 minutes a run) is what the product trains.

Every run is a real `cft train` of the dataset's recipe (benchmarks/peers.py's DATASETS) with
`backbone.path` set to the file, reading the same split file as benchmarks/peers.py
(benchmarks/results/peers/split/). Run folders go to benchmarks/results/backbone_probe/<backbone
file stem>/<method>/seed<N>/ and a finished run is never rerun (a stopped probe continues). Result:
benchmarks/results/backbone_probe.json (--json), rewritten after every finished run, with every
backbone's fingerprint and the `info` its header holds (how it was made).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from peers import DATASETS, split_files, split_overrides  # noqa: E402
from provenance import machine  # noqa: E402
from quality import METHODS, _code_commit, _commit, run_one, shared_overrides, summarise  # noqa: E402

from cft.files.atomic import atomic_write_json  # noqa: E402

PROBE_METHODS = {"head": ("head only", METHODS["head only"]), "adapters": ("adapters", [])}  # id -> (name, --set list); adapters: the recipe's own
EPOCHS, PATIENCE = 50, 10


def backbone_identity(path: Path) -> dict:
    """Fingerprint and the maker's notes (pretrain method, data, epochs) from the file's header."""
    from cft.files.backbone import read_backbone_header

    header = read_backbone_header(path)
    return {"file": str(path), "fingerprint": header.get("fingerprint"), "config": header.get("config"), "info": header.get("info", {})}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("backbones", nargs="+", type=Path, help="backbone .safetensors files (cft's format)")
    parser.add_argument("--dataset", choices=sorted(DATASETS), default="tox21")
    parser.add_argument("--methods", default="head", help=f"comma-separated: {', '.join(PROBE_METHODS)} (default head)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=EPOCHS, help=f"up to this many epochs (default {EPOCHS}; patience {PATIENCE})")
    parser.add_argument("--limit", type=int, help="about N rows of the split file only, each split in its share (a check, not a benchmark)")
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "backbone_probe")
    parser.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "backbone_probe.json")
    args = parser.parse_args()
    wanted = args.methods.split(",")
    unknown = [m for m in wanted if m not in PROBE_METHODS]
    if unknown:
        parser.error(f"--methods: unknown {', '.join(unknown)} (choose from {', '.join(PROBE_METHODS)})")
    missing = [str(b) for b in args.backbones if not b.is_file()]
    if missing:
        parser.error(f"no such backbone file: {', '.join(missing)}")
    backbones = [b.resolve() for b in args.backbones]
    stems = [b.stem for b in backbones]
    if len(set(stems)) != len(stems):
        parser.error("two backbone files share a file name: their run folders would collide; rename one")
    data, ds = args.data.resolve(), DATASETS[args.dataset]
    # the peers benchmark's split file (the same scaffold split), or a share of it under --out for --limit
    folder = REPO / "benchmarks" / "results" / "peers" / "split" if args.limit is None else args.out.resolve() / f"split-limit{args.limit}"
    csv, splits = split_files(data, folder, args.limit, args.dataset)
    identities = {b.stem: backbone_identity(b) for b in backbones}
    jobs = [(b, m, seed) for seed in range(args.seeds) for b in backbones for m in wanted]
    started, rows = time.perf_counter(), []

    # a check (--limit, --epochs) trains in a folder of its own, never beside the benchmark's runs
    out = args.out.resolve() / "-".join(([f"limit{args.limit}"] if args.limit else []) + ([f"epochs{args.epochs}"] if args.epochs != EPOCHS else []))

    def one(backbone: Path, method: str, seed: int) -> dict:
        """One run; its row's `dataset` is the backbone's file stem (quality.summarise groups by it)."""
        name, overrides = PROBE_METHODS[method]
        shared = shared_overrides(backbone, split_overrides(csv, splits))
        return run_one(backbone.stem, ds.recipe, name, seed, args.epochs, shared, out, data, args.threads, {name: overrides}, PATIENCE)

    def write(partial: bool) -> None:
        result = {"machine": machine(), "commit": _commit(), "code_commit": _code_commit(), "partial": partial,
                  "command": " ".join(["python", "benchmarks/backbone_probe.py", *[str(b.relative_to(REPO)) if b.is_relative_to(REPO) else str(b) for b in backbones],
                                       f"--dataset {args.dataset}", f"--methods {args.methods}", f"--seeds {args.seeds}"]
                                      + ([f"--epochs {args.epochs}"] if args.epochs != EPOCHS else []) + ([f"--limit {args.limit}"] if args.limit else [])),
                  "dataset": args.dataset, "recipe": ds.recipe, "epochs": args.epochs, "patience": PATIENCE, "limit": args.limit,
                  "split_csv": str(csv.relative_to(REPO)) if csv.is_relative_to(REPO) else str(csv),
                  "backbones": identities, "rows": sorted(rows, key=lambda r: (r["dataset"], r["method"], r["seed"])), "summary": summarise(rows),
                  "seconds": round(time.perf_counter() - started, 1)}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(args.json, result)

    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = [pool.submit(one, *job) for job in jobs]
        for future in as_completed(futures):
            row = future.result()
            rows.append(row)
            print(f"{row['dataset']} {row['method']} seed {row['seed']}: " + (f"valid {row['valid']:.4f} test {row['test']:.4f}" if "error" not in row else f"FAILED {row['error']}"), flush=True)
            write(partial=len(rows) < len(jobs))
    write(partial=False)
    for key, s in summarise(rows).items():
        std = f" ± {s['test_sample_std']:.4f}" if s["test_sample_std"] is not None else ""
        print(f"{key:64s} test {s['test_mean']:.4f}{std}  valid {s['valid_mean']:.4f}  best epochs {s['best_epochs']}")


if __name__ == "__main__":
    os.environ.setdefault("CFT_QUIET", "1")
    main()
