"""Pretrain a benchmark backbone on unlabelled molecules that no evaluation set tests on.

The molecules are those of HIV.csv.gz and muv.csv.gz (labels unused), each once by RDKit canonical
SMILES, less every molecule of the valid and test splits of the peers benchmark's split files
(Tox21, ToxCast, ESOL: benchmarks/results/peers/split/, written by cft's scaffold split when
missing), compared by canonical SMILES. The backbone is recipes/tox21.yaml's (GIN-VN 300x5,
dropout 0.5), pretrained by cft's own pretraining stage (`backbone.pretrain`: attribute masking by
default, `--method contrastive` or `masking+contrastive` for GraphCL's objective alone or beside
it) on that molecule list, and written as one safetensors file (float32, the backbone
format every `backbone.path` reads) with a JSON record beside it: the command, the molecule counts,
the pretraining settings, the seconds and the fingerprint.

    python benchmarks/pretrain_backbone.py --out benchmarks/backbones/NAME.safetensors [--epochs 10 | --minutes M]
        [--batch-size 256] [--lr 0.001] [--method masking|contrastive|masking+contrastive] [--dropout 0.5] [--device cuda] [--limit N]

`--minutes M` chooses the epochs instead: as many whole epochs of the list as fit in M minutes of
pretraining, timed by one epoch over its first 10,000 molecules first (which also warms a GPU up;
featurising the list is not counted). `benchmarks/gpu_pretrain.sh` runs it so on a lent GPU.

On a GPU this is what to spend the time on (the peers issue): about 134,000 molecules an epoch.
On 2 CPU cores one epoch of the full list takes tens of minutes; `--limit N` keeps the first N
molecules of the list (a check of the pipeline, not a backbone to benchmark).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from rdkit import Chem, RDLogger  # noqa: E402

RDLogger.DisableLog("rdApp.*")

SOURCES = ("HIV.csv.gz", "muv.csv.gz")
EVALUATION_SETS = ("tox21", "toxcast", "esol")


def canonical(smiles: str) -> str | None:
    """RDKit's canonical SMILES, None when RDKit cannot parse it (RDKit's parse warnings are
    switched off once, at import: some 134,000 SMILES pass through here)."""
    mol = Chem.MolFromSmiles(smiles)
    return Chem.MolToSmiles(mol) if mol is not None else None


def held_out_molecules(data: Path, split_folder: Path) -> dict[str, set[str]]:
    """Canonical SMILES of the valid and test molecules of each evaluation set's split file."""
    import pandas as pd
    from peers import split_files

    held = {}
    for name in EVALUATION_SETS:
        csv, _ = split_files(data, split_folder, None, name)
        frame = pd.read_csv(csv)
        smiles_column = [c for c in frame.columns if c.lower() == "smiles"][0]
        held[name] = {c for s in frame.loc[frame["split"] != "train", smiles_column].astype(str) if (c := canonical(s))}
    return held


def pretraining_molecules(data: Path, held: dict[str, set[str]], limit: int | None) -> tuple[list[str], dict]:
    """The sources' parsable molecules, each once, less the held-out ones; with the counts."""
    import pandas as pd

    seen, kept, counts = set(), [], {"rows": {}, "unparsable": 0, "duplicates": 0, "held_out": 0}
    excluded = set().union(*held.values())
    for name in SOURCES:
        column = pd.read_csv(data / name, usecols=["smiles"])["smiles"].astype(str)
        counts["rows"][name] = len(column)
        for smiles in column:
            c = canonical(smiles)
            if c is None:
                counts["unparsable"] += 1
            elif c in seen:
                counts["duplicates"] += 1
            elif c in excluded:
                counts["held_out"] += 1
                seen.add(c)
            else:
                seen.add(c)
                kept.append(c)
    counts["held_out_per_set"] = {n: len(s) for n, s in held.items()}
    if limit is not None:
        kept = kept[:limit]
    counts["pretraining_molecules"] = len(kept)
    return kept, counts


def pretrain(smiles: list[str], args: argparse.Namespace) -> tuple[Path, dict]:
    """cft's pretraining stage on `smiles` (a one-column CSV in a temporary folder)."""
    import pandas as pd
    import torch

    from cft.files.backbone import backbone_fingerprint, load_backbone
    from cft.recipe.load import load_recipe
    from cft.spec import BackboneSpec
    from cft.training.pretrain import pretrained_backbone, settings_read
    from cft.training.seeding import use_deterministic_kernels

    folder = Path(tempfile.mkdtemp(prefix="cft-pretrain-"))
    pd.DataFrame({"smiles": smiles}).to_csv(folder / "molecules.csv", index=False)
    recipe = load_recipe(REPO / "recipes" / "tox21.yaml", [
        f"backbone.dropout={args.dropout}", f"backbone.pretrain.method={args.method}", f"backbone.pretrain.epochs={args.epochs}",
        f"backbone.pretrain.batch_size={args.batch_size}", f"backbone.pretrain.lr={args.lr}", "backbone.pretrain.cache=false",
        "backbone.pretrained=null", "backbone.pretrain.data.source=csv", "backbone.pretrain.data.path=molecules.csv", f"seed={args.seed}",
    ])
    use_deterministic_kernels(args.device == "cpu")  # CUDA scatter has no deterministic kernel worth its cost here
    device = torch.device(args.device)
    started = time.perf_counter()
    backbone, made = pretrained_backbone(recipe.backbone.pretrain, BackboneSpec.of(recipe.backbone), recipe.seed, folder, args.out, device)
    seconds = time.perf_counter() - started
    fingerprint = backbone_fingerprint(load_backbone(args.out))
    if fingerprint != backbone_fingerprint(backbone):
        raise SystemExit(f"{args.out} does not hold the backbone just pretrained (fingerprint {fingerprint})")
    settings = settings_read(recipe.backbone.pretrain, leave_out=frozenset({"data"}))
    return folder, {"fingerprint": fingerprint, "seconds": round(seconds, 1), "pretrain": settings, "dropout": args.dropout, "seed": args.seed,
                    "key": made["key"], "device": str(device), "torch": torch.__version__}


PROBE_MOLECULES = 10_000


def epochs_within(minutes: float, smiles: list[str], args: argparse.Namespace) -> tuple[int, dict]:
    """The whole epochs of `smiles` that fit in `minutes` of pretraining, from one timed epoch over
    its first PROBE_MOLECULES (the same settings, its backbone discarded), and how they were chosen."""
    sample = smiles[:PROBE_MOLECULES]
    probe = argparse.Namespace(**{**vars(args), "epochs": 1, "out": Path(tempfile.mkdtemp(prefix="cft-probe-")) / "probe.safetensors"})
    folder, made = pretrain(sample, probe)
    per_molecule = made["seconds"] / len(sample)
    epochs = max(1, int(minutes * 60 / (per_molecule * len(smiles))))
    for leftover in (folder, probe.out.parent):
        shutil.rmtree(leftover, ignore_errors=True)
    print(f"one epoch of {len(sample):,} molecules took {made['seconds']:.1f} s: {epochs} epoch(s) of {len(smiles):,} fit in {minutes:g} min", flush=True)
    return epochs, {"minutes": minutes, "probe_molecules": len(sample), "probe_seconds": made["seconds"], "seconds_per_molecule": per_molecule}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="the backbone file to write (.safetensors); its record goes beside it (.json)")
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--split-folder", type=Path, default=REPO / "benchmarks" / "results" / "peers" / "split", help="the peers benchmark's split files")
    parser.add_argument("--method", choices=("masking", "contrastive", "masking+contrastive"), default="masking",
                        help="the pretraining objective, cft's `backbone.pretrain.method` (labels are never read)")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--minutes", type=float, help="instead of --epochs: as many epochs as fit in this many minutes (timed first)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--dropout", type=float, default=0.5, help="the backbone's dropout while pretraining (recipes/tox21.yaml: 0.5)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None, help="cuda when available, else cpu")
    parser.add_argument("--limit", type=int, help="the first N molecules only (a check, not a benchmark backbone)")
    args = parser.parse_args()
    import torch

    from cft.files.atomic import atomic_write_json

    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.out.suffix != ".safetensors":
        parser.error(f"--out {args.out} must end in .safetensors")
    if args.epochs < 1 or args.batch_size < 1 or (args.limit is not None and args.limit < 1):
        parser.error("--epochs, --batch-size and --limit must be at least 1")
    if args.minutes is not None and args.minutes <= 0:
        parser.error("--minutes must be positive")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("CFT_QUIET", "1")
    started = time.perf_counter()
    held = held_out_molecules(args.data, args.split_folder)
    smiles, counts = pretraining_molecules(args.data, held, args.limit)
    print(f"{counts['pretraining_molecules']:,} molecules ({counts['held_out']:,} held out, {counts['duplicates']:,} duplicates, "
          f"{counts['unparsable']} unparsable) in {time.perf_counter() - started:.0f} s", flush=True)
    chosen = {}
    if args.minutes is not None:
        args.epochs, chosen = epochs_within(args.minutes, smiles, args)
    folder, made = pretrain(smiles, args)
    command = " ".join(["python", "benchmarks/pretrain_backbone.py", *sys.argv[1:]])
    record = {"command": command, "sources": list(SOURCES), "held_out_from": {n: "valid + test of the peers split file" for n in EVALUATION_SETS},
              "molecules": counts, **made, **({"epochs_chosen": chosen} if chosen else {}), "seconds_in_all": round(time.perf_counter() - started, 1)}
    atomic_write_json(args.out.with_suffix(".json"), record)
    (folder / "molecules.csv").unlink()
    folder.rmdir()
    print(f"wrote {args.out} (fingerprint {made['fingerprint']}, {made['seconds']:.0f} s of pretraining) and {args.out.with_suffix('.json')}")


if __name__ == "__main__":
    main()
