"""Build a dataset folder in OGB's own raw layout from a MoleculeNet CSV (tests only).

The layout is what ogb unpacks from its download: mapping/mol.csv.gz, raw/*.csv.gz (one
direction per bond; ogb adds the inverse edges), split/scaffold/*.csv.gz and RELEASE_v1.txt.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from ogb.utils import smiles2graph

from cft.data.split import scaffold_split


def write_ogb_folder(csv_path: Path, root: Path, name: str = "ogbg-moltox21", limit: int | None = None) -> Path:
    frame = pd.read_csv(csv_path)
    if limit:
        frame = frame.iloc[:limit]
    smiles_col = frame.columns[0]
    tasks = [c for c in frame.columns if c != smiles_col]
    graphs, keep = [], []
    for i, s in enumerate(frame[smiles_col]):
        try:
            graphs.append(smiles2graph(s))
            keep.append(i)
        except Exception:
            continue
    frame = frame.iloc[keep].reset_index(drop=True)
    folder = root / name.replace("-", "_")
    (folder / "raw").mkdir(parents=True)
    (folder / "mapping").mkdir()
    (folder / "split" / "scaffold").mkdir(parents=True)
    mapping = frame[tasks].copy()
    mapping["smiles"] = frame[smiles_col]
    mapping["mol_id"] = [f"mol{i}" for i in range(len(frame))]
    mapping.to_csv(folder / "mapping" / "mol.csv.gz", index=False)
    edges = np.concatenate([g["edge_index"][:, ::2].T for g in graphs])
    edge_feat = np.concatenate([g["edge_feat"][::2] for g in graphs])
    node_feat = np.concatenate([g["node_feat"] for g in graphs])
    write = lambda arr, file: pd.DataFrame(arr).to_csv(folder / "raw" / file, index=False, header=False)  # noqa: E731
    write(edges, "edge.csv.gz")
    write(edge_feat, "edge-feat.csv.gz")
    write(node_feat, "node-feat.csv.gz")
    write(np.array([g["num_nodes"] for g in graphs]), "num-node-list.csv.gz")
    write(np.array([g["edge_index"].shape[1] // 2 for g in graphs]), "num-edge-list.csv.gz")
    frame[tasks].to_csv(folder / "raw" / "graph-label.csv.gz", index=False, header=False)
    split = scaffold_split(frame[smiles_col].tolist(), (0.8, 0.1, 0.1))
    for part, idx in split.items():
        pd.DataFrame(idx).to_csv(folder / "split" / "scaffold" / f"{part}.csv.gz", index=False, header=False)
    (folder / "RELEASE_v1.txt").write_text("built by cft's tests from a MoleculeNet CSV\n")
    return folder
