"""Memory of cft's featurised molecules and of the frozen-prefix cache, measured on real data.

    python benchmarks/store_size.py [--data ../shared/data] [--hidden 300] [--out benchmarks/results/store_size.json]

For each dataset (HIV and Tox21 from ../shared/data): the bytes per molecule of cft's compact
graph store (`cft.data.graphs.GraphStore`: uint8 OGB features, int16 per-molecule edge indices,
int64 offsets) against the same tensors held as int64 (what one PyG `Data` per molecule from
`ogb.utils.smiles2graph` holds), the mean atoms per molecule, and the float32 frozen-prefix cache
per molecule at the given hidden width (one node state per atom plus one virtual-node state:
4 x hidden x (atoms + 1) bytes). Each is also scaled to 437,929 molecules, the molpcba-sized set
`benchmarks/gpu.sh` builds (HIV + MUV repeated). Featurisation goes through cft's cache
($CFT_CACHE_DIR), so a second run takes seconds.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
MOLPCBA_SIZED = 437_929
DATASETS = {"hiv": ("HIV.csv.gz", "smiles"), "tox21": ("tox21.csv", "smiles")}


def measure(smiles: list[str], hidden: int) -> dict:
    """Store bytes (compact and int64), atoms and prefix-cache bytes per valid molecule."""
    from cft.data.graphs import featurise

    store, valid, seconds, cached = featurise(smiles, label="molecules")
    tensors = store.tensors()
    compact = sum(t.numel() * t.element_size() for t in tensors.values())
    as_int64 = sum(t.numel() * 8 for t in tensors.values())
    n, atoms = len(store), int(store.x.shape[0])
    per_molecule = {"compact": compact / n, "int64": as_int64 / n}
    prefix = 4 * hidden * (atoms + n) / n
    return {"molecules": n, "invalid": int((~valid).sum()), "atoms_per_molecule": atoms / n,
            "store_bytes_per_molecule": per_molecule, "prefix_cache_bytes_per_molecule_fp32": prefix,
            f"at_{MOLPCBA_SIZED}_molecules_GB": {"store_compact": per_molecule["compact"] * MOLPCBA_SIZED / 1e9,
                                                  "store_int64": per_molecule["int64"] * MOLPCBA_SIZED / 1e9,
                                                  "prefix_cache_fp32": prefix * MOLPCBA_SIZED / 1e9},
            "featurise_seconds": seconds, "from_cache": cached}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--hidden", type=int, default=300, help="backbone width of the prefix cache (GIN-VN 300x5: 300)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "store_size.json")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO / "benchmarks"))
    from provenance import machine

    results = {}
    for name, (file, column) in DATASETS.items():
        smiles = pd.read_csv(args.data / file, usecols=[column])[column].astype(str).tolist()
        results[name] = measure(smiles, args.hidden)
        r = results[name]
        print(f"{name}: {r['molecules']:,} molecules, {r['atoms_per_molecule']:.1f} atoms each; store "
              f"{r['store_bytes_per_molecule']['compact']:.0f} B/molecule (int64: {r['store_bytes_per_molecule']['int64']:.0f}); "
              f"prefix cache {r['prefix_cache_bytes_per_molecule_fp32'] / 1e3:.1f} KB/molecule")
    out = {"machine": machine(), "hidden": args.hidden, "command": "python benchmarks/store_size.py", "datasets": results}
    tmp = args.out.with_name(f".{args.out.name}.tmp")
    tmp.write_text(json.dumps(out, indent=2))
    tmp.replace(args.out)


if __name__ == "__main__":
    main()
