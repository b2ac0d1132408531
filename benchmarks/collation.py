"""Collation on CPU: PyG's DataLoader (one `Data` per molecule, `Batch.from_data_list`) against
batches sliced straight from the compact store (`cft.training.prefix.StoreBatches`), with and
without the cached frozen-prefix states (per-graph tensors in `Data` objects collated by PyG, or
sliced from one flat tensor by the graphs' node offsets).

    python benchmarks/collation.py [--data ../shared/data] [--batch-size 32] [--json benchmarks/results/collation.json]

Every variant builds the same batches of one epoch of Tox21's molecules (shuffled order), in
interleaved order, repeated; the median seconds per epoch is reported.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from torch_geometric.loader import DataLoader

from cft.data.graphs import GraphDataset, featurise
from cft.training.prefix import PrefixCache, PrefixStates, StoreBatches, as_is


class DataWithPrefix(GraphDataset):
    """GraphDataset whose Data objects also carry the molecule's cached states (h [n, d], vn [1, d])."""

    def __init__(self, store, y, indices, h, vn):
        super().__init__(store, y, indices)
        self.h, self.vn = h, vn

    def get(self, idx):
        data = super().get(idx)
        i = int(self.indices_[idx])
        a, b = int(self.store.node_ptr[i]), int(self.store.node_ptr[i + 1])
        data.h, data.vn = self.h[a:b], self.vn[i : i + 1]
        return data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repetitions", type=int, default=5)
    parser.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "collation.json")
    args = parser.parse_args()
    import pandas as pd

    smiles = pd.read_csv(args.data / "tox21.csv")["smiles"].tolist()
    store, _, _, _ = featurise(smiles, label="tox21")
    n, hidden = len(store), 300
    y = torch.zeros(n, 12)
    order = np.random.default_rng(0).permutation(n)
    h = torch.randn(store.x.size(0), hidden)
    vn = torch.randn(n, hidden)
    bs = args.batch_size

    def pyg_loader():
        for _ in DataLoader(GraphDataset(store, y, order), batch_size=bs):
            pass

    def pyg_loader_with_states():
        for b in DataLoader(DataWithPrefix(store, y, order, h, vn), batch_size=bs):
            b.h, b.vn  # noqa: B018

    def store_slices():
        for _ in torch.utils.data.DataLoader(StoreBatches(store, y, order, bs), batch_size=None, collate_fn=as_is):
            pass

    cache = PrefixCache(PrefixStates(1, h, vn))
    cpu = torch.device("cpu")

    def store_slices_with_states():
        for b in torch.utils.data.DataLoader(StoreBatches(store, y, order, bs, with_index=True), batch_size=None, collate_fn=as_is):
            cache.take(b, cpu)

    variants = {
        "PyG DataLoader (Batch.from_data_list)": pyg_loader,
        "PyG DataLoader, cached states as per-graph Data tensors": pyg_loader_with_states,
        "sliced from the compact store": store_slices,
        "sliced from the compact store, cached states sliced by node offsets": store_slices_with_states,
    }
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(args.repetitions):
        for name, fn in variants.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    batches = -(-n // bs)
    result = {
        "molecules": n, "batch_size": bs, "batches": batches, "torch_threads": torch.get_num_threads(), "repetitions": args.repetitions,
        "variants": {k: {"median_epoch_seconds": statistics.median(v), "median_ms_per_batch": 1000 * statistics.median(v) / batches, "all": v}
                     for k, v in times.items()},
    }
    base = result["variants"]["PyG DataLoader (Batch.from_data_list)"]["median_epoch_seconds"]
    for name, row in result["variants"].items():
        row["speed-up over PyG"] = base / row["median_epoch_seconds"]
        print(f"{name:70s} {row['median_epoch_seconds']:.3f} s/epoch  {row['median_ms_per_batch']:.3f} ms/batch  {row['speed-up over PyG']:.1f}x")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
