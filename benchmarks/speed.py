"""Speed benchmarks: ratios measured side by side, in one run, on the same data and batch size.

    python benchmarks/speed.py [--quick] [--data ../shared/data] [--json results/speed.json]
                               [--sections throughput,featurisation,scaling,time-to-result]
                               [--ttr-epochs N] [--ttr-chemprop-epochs 20,30]

Every measurement runs in its own subprocess (so peak resident memory is that mode's alone), in
interleaved order (A, B, C, A, B, C, ...), and the median over repetitions is reported:

- training graphs/s: cft adapters as in the shipped recipes (one linear rank-12 update on both GIN
  MLP Linears of every layer; with `train.frozen_bf16: auto`, i.e. the frozen products in bf16 on
  a CPU with AMX tiles and their input gradients' products in bf16 on one with AVX512-BF16 alone,
  and the same with them in fp32) and routed K=4 r=8 adapters on the layer outputs (the recipes
  before) vs cft full fine-tuning of the same GIN-VN 300x5 (target >= 2.0x); adapters in the top two layers only, with
  the frozen prefix (layers 0-2) cached and recomputed; K=8 routed vs one adapter of the same rank
  vs no adapter, and one adapter of rank 64 (K=8 r=8's bank width, so the same adapter FLOPs: the
  target is K=8 routed at most 1.1x its step time); cft full fine-tuning vs a plain PyG loop of the
  OGB example GIN-VN (benchmarks/reference_ginvn.py; target >= 1.0x);
- inference graphs/s and peak resident memory of each mode;
- featurisation cold vs cached (target >= 20x);
- time per epoch against molecules (MUV subsets) and tasks (ToxCast task subsets);
- time to a result: `recipes/tox21.yaml` (cft's default recipe, as shipped: its epochs) and
  chemprop with its defaults but --epochs, trained on the same split file (cft's scaffold split
  written as a `split` column / a chemprop `--splits-file`), one after the other: wall clock and
  test ROC-AUC (both scored by cft.metrics from the test predictions). chemprop runs once per
  entry of --ttr-chemprop-epochs (default: the recipe's epochs, i.e. the same epochs as cft, and
  30, what the speed issue measured; chemprop's own default is 50). chemprop runs from its own environment,
  benchmarks/.venv-peers (`python3 -m venv benchmarks/.venv-peers && benchmarks/.venv-peers/bin/pip
  install torch==2.13.0 chemprop`), never from cft's. The recipe starts from the backbone shipped
  with cft (`backbone.pretrained`): nothing is pretrained, and loading it is inside cft's wall clock.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from provenance import machine  # noqa: E402
from quality import METHODS  # noqa: E402

BATCH = 32
RECIPES_ADAPTERS = ["adapters.num_adapters=1", "adapters.rank=12", "adapters.placement=mlp-both", "adapters.activation=identity"]  # the shipped recipes' adapters (but ToxCast's)
# the same count of adapter weights in layers 1-4 only (layer 0 cached): rank 15 on 4 layers = rank 12 on 5
RECIPES_ADAPTERS_L14 = [o.replace("rank=12", "rank=15") for o in RECIPES_ADAPTERS] + ["adapters.layers=[1,2,3,4]"]
FULL_FINE_TUNING = METHODS["full fine-tuning"]
# recipes/tox21.yaml's training on those adapters: batch 64, LoRA's scale 8/12, the weight average
TOX21_RECIPE = RECIPES_ADAPTERS + ["train.batch_size=64", "adapters.scale=0.6667", "train.ema=0.995"]
# recipes/tox21.yaml's adapters as shipped since the `recipe-vn-r10` runs, less its frozen products' precision
TOX21_SHIPPED = [o.replace("rank=12", "rank=10") for o in TOX21_RECIPE] + ["adapters.embeddings=true", "adapters.virtual_node=true"]
MODES = {
    # name: --set overrides of the base recipe (frozen GIN-VN 300x5, Tox21)
    "cft full fine-tuning": FULL_FINE_TUNING,
    # the same at batch 64, the Tox21 recipe's batch: the 2x target compares the two at one batch size
    "cft full fine-tuning at batch 64": FULL_FINE_TUNING + ["train.batch_size=64"],
    "cft adapters K=4 r=8 (routed)": [],
    # the shipped recipes' adapters: one linear rank-12 update on both Linear layers of every GIN MLP
    # (LoRA's places); the update enters inside each layer, so the backward pass also runs through
    # each adapted layer's own MLP (input gradients), which adapters on the layer outputs skip
    "cft adapters of the recipes (K=1 r=12 linear, both GIN MLP Linears)": RECIPES_ADAPTERS,
    # the same at chemprop's default batch of 64 (same steps, twice the molecules per step): what a
    # step of 64 costs against two of 32, the time-to-result lever (the score is kept: BENCHMARKS.md)
    "cft adapters of the recipes at batch 64": RECIPES_ADAPTERS + ["train.batch_size=64"],
    # the same with the frozen backbone's products in fp32: train.frozen_bf16's default `auto` runs
    # them in bf16 on a CPU with AMX tiles, and their input gradients' products in bf16 on one with
    # AVX512-BF16 alone (where the mode above then differs from this one)
    "cft adapters of the recipes at batch 64 with frozen products fp32": RECIPES_ADAPTERS + ["train.batch_size=64", "train.frozen_bf16=false"],
    # recipes/tox21.yaml's training as a whole: its adapters at scale 8/12 and validated, chosen and
    # saved on a moving average of the weights (train.ema 0.995: one foreach lerp after every step)
    "cft adapters of the Tox21 recipe at batch 64 (scale 8/12, EMA 0.995)": TOX21_RECIPE,
    # and with its bank on the atom encoder's embeddings (adapters.embeddings, since the `adapters-emb` runs)
    "cft adapters of the Tox21 recipe at batch 64 (scale 8/12, EMA 0.995, atom embeddings)": TOX21_RECIPE + ["adapters.embeddings=true"],
    # the same with the frozen products pinned: bf16 (padded rows, cft/nn/frozen.py) and fp32, so that
    # a CPU without AMX but with AVX512-BF16 (`auto` leaves it in fp32) measures what bf16 would give;
    # the fp32 one is recipes/tox21.yaml as it is since it pinned `frozen_bf16: false` (the mode above
    # follows `auto`, bf16 on an AMX CPU)
    "cft adapters of the Tox21 recipe at batch 64 (atom embeddings), frozen products bf16": TOX21_RECIPE + ["adapters.embeddings=true", "train.frozen_bf16=true"],
    "cft adapters of the Tox21 recipe at batch 64 (atom embeddings), frozen products fp32": TOX21_RECIPE + ["adapters.embeddings=true", "train.frozen_bf16=false"],
    # recipes/tox21.yaml as shipped since the `recipe-vn-r10` runs: rank 10 on the GIN MLPs, the atom
    # embeddings and the virtual node's MLPs too (166,740 weights), frozen products fp32
    "cft adapters of the Tox21 recipe as shipped (r=10, virtual-node MLPs too), frozen products fp32": TOX21_SHIPPED + ["train.frozen_bf16=false"],
    # the same with only the frozen products' input gradients in bf16 (train.frozen_bf16=backward):
    # the forward pass in fp32, the backward half of the products at bf16's speed
    "cft adapters of the Tox21 recipe as shipped (r=10, virtual-node MLPs too), frozen products' input gradients bf16": TOX21_SHIPPED + [
        "train.frozen_bf16=backward"],
    # bf16 autocast of the steps (train.bf16_cpu; fp32 where the CPU has no native bf16 products)
    "cft adapters of the recipes at batch 64, bf16 steps": RECIPES_ADAPTERS + ["train.batch_size=64", "train.bf16_cpu=true"],
    "cft full fine-tuning at batch 64, bf16 steps": FULL_FINE_TUNING + ["train.batch_size=64", "train.bf16_cpu=true"],
    # the recipes' adapters without layer 0's, at rank 15 (4 x 15 x (900 + 900) = 108,000 weights,
    # the rank-12 count): layer 0 and the atom encoder run once per molecule (prefix cache)
    "cft adapters of the recipes in layers 1-4 (r=15) at batch 64 with layer 0 cached": RECIPES_ADAPTERS_L14 + ["train.batch_size=64"],
    # adapters in the top two layers: layers 0-2 are a fixed function, run once per molecule
    # every layer but the first: only layer 0 (and the atom encoder) is cached, the step skips its
    # forward and backward (a fifth of the layers), and every adapted layer but one is kept
    "cft adapters K=4 r=8, layers 1-4, prefix cached": ["adapters.layers=[1,2,3,4]"],
    "cft adapters K=4 r=8, layers 3-4, prefix cached": ["adapters.layers=[3,4]"],
    "cft adapters K=4 r=8, layers 3-4, prefix recomputed": ["adapters.layers=[3,4]", "train.prefix_cache=recompute"],
    "cft adapters K=8 r=8 (routed)": ["adapters.num_adapters=8"],
    "cft one adapter K=1 r=8": ["adapters.num_adapters=1", "routing.mode=uniform"],
    # same bank width as K=8 r=8 (64 columns, same adapter FLOPs) without routing: isolates what
    # the router and the per-node weights cost from what eight adapters' arithmetic costs
    "cft one adapter K=1 r=64": ["adapters.num_adapters=1", "adapters.rank=64", "routing.mode=uniform"],
    "cft no adapter (head only)": ["adapters.enabled=false"],
    "plain PyG loop (OGB example GIN-VN)": None,
}

# training-throughput ratios: name -> (numerator mode, denominator mode)
RATIOS = {
    "default-recipe adapters (K=1 r=12, both MLP Linears) / full fine-tuning (target >= 2.0)": (
        "cft adapters of the recipes (K=1 r=12 linear, both GIN MLP Linears)", "cft full fine-tuning"),
    "the recipes' adapters / full fine-tuning, both at batch 64 (target >= 2.0)": (
        "cft adapters of the recipes at batch 64", "cft full fine-tuning at batch 64"),
    "the Tox21 recipe's adapters (scale 8/12, EMA 0.995) / full fine-tuning, both at batch 64 (target >= 2.0)": (
        "cft adapters of the Tox21 recipe at batch 64 (scale 8/12, EMA 0.995)", "cft full fine-tuning at batch 64"),
    "the Tox21 recipe's adapters (scale 8/12, EMA 0.995, atom embeddings) / full fine-tuning, both at batch 64 (target >= 2.0)": (
        "cft adapters of the Tox21 recipe at batch 64 (scale 8/12, EMA 0.995, atom embeddings)", "cft full fine-tuning at batch 64"),
    "the Tox21 recipe's adapters with frozen products bf16 / full fine-tuning, both at batch 64 (target >= 2.0)": (
        "cft adapters of the Tox21 recipe at batch 64 (atom embeddings), frozen products bf16", "cft full fine-tuning at batch 64"),
    "the Tox21 recipe's adapters with frozen products fp32 / full fine-tuning, both at batch 64 (target >= 2.0)": (
        "cft adapters of the Tox21 recipe at batch 64 (atom embeddings), frozen products fp32", "cft full fine-tuning at batch 64"),
    "the Tox21 recipe's adapters as shipped (r=10, virtual-node MLPs too) / full fine-tuning, both at batch 64 (target >= 2.0)": (
        "cft adapters of the Tox21 recipe as shipped (r=10, virtual-node MLPs too), frozen products fp32", "cft full fine-tuning at batch 64"),
    "the Tox21 recipe's adapters as shipped with the input gradients' products in bf16 / full fine-tuning, both at batch 64 (target >= 2.0)": (
        "cft adapters of the Tox21 recipe as shipped (r=10, virtual-node MLPs too), frozen products' input gradients bf16", "cft full fine-tuning at batch 64"),
    "the Tox21 recipe's adapters as shipped: input gradients' products bf16 / fp32": (
        "cft adapters of the Tox21 recipe as shipped (r=10, virtual-node MLPs too), frozen products' input gradients bf16",
        "cft adapters of the Tox21 recipe as shipped (r=10, virtual-node MLPs too), frozen products fp32"),
    "the Tox21 recipe's adapters at batch 64: frozen products bf16 / fp32": (
        "cft adapters of the Tox21 recipe at batch 64 (atom embeddings), frozen products bf16",
        "cft adapters of the Tox21 recipe at batch 64 (atom embeddings), frozen products fp32"),
    "the recipes' adapters at batch 64 with frozen products fp32 / full fine-tuning at batch 64": (
        "cft adapters of the recipes at batch 64 with frozen products fp32", "cft full fine-tuning at batch 64"),
    "the recipes' adapters at batch 64: frozen products as train.frozen_bf16 auto / fp32": (
        "cft adapters of the recipes at batch 64", "cft adapters of the recipes at batch 64 with frozen products fp32"),
    "the recipes' adapters / full fine-tuning, both at batch 64 in bf16 steps (target >= 2.0)": (
        "cft adapters of the recipes at batch 64, bf16 steps", "cft full fine-tuning at batch 64, bf16 steps"),
    "the recipes' adapters in bf16 steps / full fine-tuning in fp32, both at batch 64": (
        "cft adapters of the recipes at batch 64, bf16 steps", "cft full fine-tuning at batch 64"),
    "the recipes' adapters in layers 1-4 (layer 0 cached) / full fine-tuning, both at batch 64 (target >= 2.0)": (
        "cft adapters of the recipes in layers 1-4 (r=15) at batch 64 with layer 0 cached", "cft full fine-tuning at batch 64"),
    "the recipes' adapters at batch 64: layers 1-4 (layer 0 cached) / every layer": (
        "cft adapters of the recipes in layers 1-4 (r=15) at batch 64 with layer 0 cached", "cft adapters of the recipes at batch 64"),
    "the recipes' adapters at batch 64: bf16 / fp32 steps": ("cft adapters of the recipes at batch 64, bf16 steps", "cft adapters of the recipes at batch 64"),
    "full fine-tuning at batch 64: bf16 / fp32 steps": ("cft full fine-tuning at batch 64, bf16 steps", "cft full fine-tuning at batch 64"),
    "the recipes' adapters: batch 64 / batch 32 (graphs/s)": (
        "cft adapters of the recipes at batch 64", "cft adapters of the recipes (K=1 r=12 linear, both GIN MLP Linears)"),
    "routed adapters K=4 on the layer outputs (every layer) / full fine-tuning": ("cft adapters K=4 r=8 (routed)", "cft full fine-tuning"),
    "adapters K=4 in layers 1-4, prefix cached / full fine-tuning": ("cft adapters K=4 r=8, layers 1-4, prefix cached", "cft full fine-tuning"),
    "adapters K=4 in layers 3-4, prefix cached / full fine-tuning": ("cft adapters K=4 r=8, layers 3-4, prefix cached", "cft full fine-tuning"),
    "layers 3-4: prefix cached / recomputed": ("cft adapters K=4 r=8, layers 3-4, prefix cached", "cft adapters K=4 r=8, layers 3-4, prefix recomputed"),
    "one adapter K=1 / K=8 routed (routing overhead)": ("cft one adapter K=1 r=8", "cft adapters K=8 r=8 (routed)"),
    "K=8 r=8 routed step time / one adapter K=1 r=64 (same bank width; target <= 1.1)": ("cft one adapter K=1 r=64", "cft adapters K=8 r=8 (routed)"),
    "no adapter / K=8 routed": ("cft no adapter (head only)", "cft adapters K=8 r=8 (routed)"),
    "cft full fine-tuning / plain PyG loop (target >= 1.0)": ("cft full fine-tuning", "plain PyG loop (OGB example GIN-VN)"),
}

BASE_RECIPE = """
seed: 0
data: {source: csv, path: tox21.csv}
backbone: {num_layers: 5, hidden: 300, dropout: 0.5, freeze: true}
adapters: {num_adapters: 4, rank: 8, layers: all}
train: {epochs: 1, batch_size: %d, lr: 0.003, patience: null, max_steps: %d}
eval: {batch_size: 256}
"""


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ----------------------------------------------------------------- children (one measurement each)


def child_cft(overrides: list[str], steps: int, data: Path, infer: bool = True) -> dict:
    import torch

    from cft.data.dataset import load_dataset
    from cft.files.bundle import load_bundle
    from cft.recipe.load import load_recipe
    from cft.training.inference import predict_logits
    from cft.training.trainer import train_recipe

    with tempfile.TemporaryDirectory() as tmp:
        recipe_path = Path(tmp) / "speed.yaml"
        recipe_path.write_text(BASE_RECIPE % (BATCH, steps))
        recipe = load_recipe(recipe_path, overrides)
        summary = train_recipe(recipe, Path(tmp) / "run", data)
        if infer:
            model, _ = load_bundle(Path(tmp) / "run" / "bundle.safetensors")
            dataset = load_dataset(recipe.data, data, 0)
            subset = dataset.subset("train")
            start = time.perf_counter()
            predict_logits(model, subset, 256, torch.device("cpu"))
            infer = len(subset) / (time.perf_counter() - start)
        else:
            infer = float("nan")
    seconds = summary["seconds"]
    return {"train_graphs_per_s": summary["graphs_per_second"], "infer_graphs_per_s": infer, "peak_rss_mib": peak_rss_mib(),
            "trainable": summary["params"]["trainable"], "total": summary["params"]["total"], "prefix_seconds": seconds.get("prefix", 0.0),
            "train_seconds": seconds["train"], "precision": summary["precision"]}


def child_reference(steps: int, data: Path) -> dict:
    import numpy as np
    import pandas as pd
    import torch
    from reference_ginvn import GINVirtualNode, data_list, train_steps
    from torch_geometric.loader import DataLoader

    frame = pd.read_csv(data / "tox21.csv")
    smiles, labels = [], []
    from rdkit import Chem, RDLogger

    RDLogger.DisableLog("rdApp.*")
    for s, y in zip(frame["smiles"], frame.drop(columns=["smiles"]).to_numpy(dtype=np.float32)):
        if Chem.MolFromSmiles(s) is not None:
            smiles.append(s)
            labels.append(y)
    graphs = data_list(smiles, labels)
    torch.manual_seed(0)
    model = GINVirtualNode(num_tasks=labels[0].shape[0])
    loader = DataLoader(graphs, batch_size=BATCH, shuffle=True)
    start = time.perf_counter()
    seen = train_steps(model, loader, steps)
    train = seen / (time.perf_counter() - start)
    model.eval()
    start = time.perf_counter()
    with torch.no_grad():
        for batch in DataLoader(graphs, batch_size=256):
            model(batch)
    infer = len(graphs) / (time.perf_counter() - start)
    return {"train_graphs_per_s": train, "infer_graphs_per_s": infer, "peak_rss_mib": peak_rss_mib()}


def child_epoch(overrides: list[str], data: Path) -> dict:
    """One full epoch (training steps only) of the base recipe with `overrides`."""
    from cft.recipe.load import load_recipe
    from cft.training.trainer import train_recipe

    with tempfile.TemporaryDirectory() as tmp:
        recipe_path = Path(tmp) / "epoch.yaml"
        recipe_path.write_text((BASE_RECIPE % (BATCH, 10**9)).replace("max_steps: 1000000000", "max_steps: null"))
        summary = train_recipe(load_recipe(recipe_path, overrides), Path(tmp) / "run", data)
    return {"epoch_seconds": summary["seconds"]["train"], "train_molecules": round(summary["graphs_per_second"] * summary["seconds"]["train"]),
            "tasks": len(summary["tasks"]), "peak_rss_mib": peak_rss_mib(), "featurise_seconds": summary["seconds"]["featurise"]}


def child_featurise(data: Path) -> dict:
    import pandas as pd

    from cft.data.graphs import featurise

    smiles = pd.read_csv(data / "tox21.csv")["smiles"].tolist()
    _, _, cold, _ = featurise(smiles, use_cache=False)
    featurise(smiles)  # make sure the cache holds it
    _, _, cached, hit = featurise(smiles)
    assert hit
    return {"molecules": len(smiles), "cold_seconds": cold, "cached_seconds": cached, "ratio": cold / cached}


TTR_TASKS = ["NR-AR", "NR-AR-LBD", "NR-AhR", "NR-Aromatase", "NR-ER", "NR-ER-LBD", "NR-PPAR-gamma", "SR-ARE", "SR-ATAD5", "SR-HSE", "SR-MMP", "SR-p53"]
PEERS_PYTHON = REPO / "benchmarks" / ".venv-peers" / "bin" / "python"


TTR_CHEMPROP_EPOCHS = 30  # what the speed issue timed chemprop at (its own default is 50)


def ttr_recipe_overrides(split_csv: Path, epochs: int | None) -> list[str]:
    """recipes/tox21.yaml as it is, on the split file, for `epochs` epochs (None: the recipe's) and
    without early stopping (every epoch is run, as chemprop runs its --epochs)."""
    return [f"data.path={split_csv}", "data.split.method=column", "data.split.column=split", "train.patience=null"] + (
        [f"train.epochs={epochs}"] if epochs else [])


def recipe_epochs() -> int:
    from cft.recipe.load import load_recipe

    return load_recipe(REPO / "recipes" / "tox21.yaml").train.epochs


def write_split_files(data: Path, folder: Path, recipe: str = "recipes/tox21.yaml", name: str = "tox21", overrides: Sequence[str] = ()) -> tuple[Path, Path]:
    """cft's split of the recipe's CSV (by default recipes/tox21.yaml's scaffold split of tox21.csv;
    `overrides`: `--set` items on the recipe, such as another split method)
    as one CSV with a `split` column (the rows cft keeps, in input order), `<name>_split.csv`, and
    the same rows' indices as chemprop's --splits-file, `<name>_splits.json`."""
    import pandas as pd

    from cft.data.dataset import load_dataset
    from cft.recipe.load import load_recipe

    loaded = load_recipe(REPO / recipe, list(overrides))
    dataset = load_dataset(loaded.data, data, loaded.seed)
    frame = pd.read_csv(data / loaded.data.path)  # dataset.rows index this file's data rows
    which = {}
    for part, indices in dataset.split.items():  # `name` is the file names' prefix
        for k in indices:
            which[int(dataset.rows[k])] = part
    rows = sorted(which)
    out = frame.iloc[rows].reset_index(drop=True)
    # one concat, not a column insert: ToxCast's 618 columns would make pandas warn of a fragmented frame
    out = pd.concat([out, pd.Series([which[r] for r in rows], name="split")], axis=1)
    split_csv = folder / f"{name}_split.csv"
    out.to_csv(split_csv, index=False)
    splits = [{"train": [], "val": [], "test": []}]
    for i, part in enumerate(out["split"]):
        splits[0]["val" if part == "valid" else part].append(i)
    splits_json = folder / f"{name}_splits.json"
    splits_json.write_text(json.dumps(splits))
    return split_csv, splits_json


def child_ttr_cft(data: Path, folder: str, epochs: int | None) -> dict:
    from cft.recipe.load import load_recipe
    from cft.training.trainer import train_recipe

    start = time.perf_counter()
    recipe = load_recipe(REPO / "recipes" / "tox21.yaml", ttr_recipe_overrides(Path(folder) / "tox21_split.csv", epochs))
    with tempfile.TemporaryDirectory() as tmp:
        summary = train_recipe(recipe, Path(tmp) / "run", data)
    wall = time.perf_counter() - start
    return {"wall_seconds": wall, "train_seconds": summary["seconds"]["train"], "test_rocauc": summary["test"]["mean"],
            "valid_rocauc": summary["valid"]["mean"], "epochs": summary["epochs_run"], "best_epoch": summary["best_epoch"], "precision": summary["precision"],
            "peak_rss_mib": peak_rss_mib()}


def ttr_chemprop(folder: Path, epochs: int, env: dict) -> dict:
    """chemprop's defaults (`chemprop train`), on the same rows and split, from benchmarks/.venv-peers."""
    import numpy as np
    import pandas as pd

    from cft.metrics import score

    out = folder / f"chemprop-{epochs}"  # one output folder per run: the predictions are found by name below
    cmd = [str(PEERS_PYTHON.parent / "chemprop"), "train", "--data-path", str(folder / "tox21_split.csv"), "--task-type", "classification",
           "--smiles-columns", "smiles", "--target-columns", *TTR_TASKS, "--splits-file", str(folder / "tox21_splits.json"),
           "--epochs", str(epochs), "--metrics", "roc", "--output-dir", str(out), "--num-workers", "0", "--accelerator", "cpu", "--devices", "1"]
    start = time.perf_counter()
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    wall = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"chemprop failed:\n{result.stderr[-3000:]}")
    frame = pd.read_csv(folder / "tox21_split.csv")
    test = frame[frame["split"] == "test"].reset_index(drop=True)
    predictions = pd.read_csv(next(out.rglob("test_predictions.csv")))
    logits = predictions[TTR_TASKS].to_numpy(dtype=np.float64)
    logits = np.log(np.clip(logits, 1e-7, 1 - 1e-7)) - np.log(np.clip(1 - logits, 1e-7, 1))  # probabilities -> logits (same ranking)
    metric = score("rocauc", test[TTR_TASKS].to_numpy(dtype=np.float32), logits, TTR_TASKS)
    version = subprocess.run([str(PEERS_PYTHON), "-c", "import chemprop; print(chemprop.__version__)"], capture_output=True, text=True, check=False)
    return {"wall_seconds": wall, "test_rocauc": metric["mean"], "epochs": epochs, "chemprop": version.stdout.strip()}


def select_modes(text: str | None) -> dict[str, list[str] | None]:
    """The throughput modes `--modes` names (None: all). Its items are separated by commas; a mode's
    whole name selects that mode only, even where the name holds commas itself, and any other
    text every mode whose name contains it."""
    if not text:
        return dict(MODES)
    whole, rest = set(), text
    for name in sorted(MODES, key=len, reverse=True):  # longest first: a name inside another is not cut out of it
        item = re.compile(rf"(^|,)\s*{re.escape(name)}\s*(?=,|$)")
        if item.search(rest):
            whole.add(name)
            rest = item.sub(r"\1", rest)
    parts = [p.strip() for p in rest.split(",") if p.strip()]
    return {m: o for m, o in MODES.items() if m in whole or any(p in m for p in parts)}


def run_child(kind: str, payload: dict, data: Path, env: dict) -> dict:
    cmd = [sys.executable, __file__, "--child", kind, "--payload", json.dumps(payload), "--data", str(data)]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise RuntimeError(f"{kind} {payload} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------- orchestration


def epoch_list(text: str) -> list[int]:
    """"20,30" -> [20, 30]."""
    return [positive_int(part.strip()) for part in text.split(",") if part.strip()]


def positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, got {text!r}")
    return int(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer steps, one repetition, small scaling runs (~5 minutes)")
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--json", type=Path, help="where to write the results (default: benchmarks/results/speed.json, speed_quick.json with --quick)")
    parser.add_argument("--repetitions", type=positive_int, help="interleaved repetitions of each throughput mode (default 3, 1 with --quick)")
    parser.add_argument("--sections", default="throughput,featurisation,scaling,time-to-result",
                        help="which parts to run (comma-separated): throughput, featurisation, scaling, time-to-result")
    parser.add_argument("--modes", help="throughput modes to run: comma-separated whole names or parts of names (default: all)")
    parser.add_argument("--steps", type=positive_int, help="training steps per throughput measurement (default 200, 60 with --quick)")
    parser.add_argument("--no-inference", action="store_true", help="throughput: measure training only (no inference pass)")
    parser.add_argument("--ttr-epochs", type=positive_int, help="epochs of cft in the time-to-result row (default: the recipe's)")
    parser.add_argument("--ttr-chemprop-epochs", type=epoch_list, help=f"chemprop's epochs in the time-to-result row, one run each "
                        f"(default: cft's epochs and {TTR_CHEMPROP_EPOCHS})")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--payload", default="{}", help=argparse.SUPPRESS)
    args = parser.parse_args()
    data = args.data.resolve()
    if args.json is None:
        args.json = REPO / "benchmarks" / "results" / ("speed_quick.json" if args.quick else "speed.json")

    if args.child:
        payload = json.loads(args.payload)
        handlers = {
            "cft": lambda: child_cft(payload["overrides"], payload["steps"], data, payload.get("infer", True)),
            "reference": lambda: child_reference(payload["steps"], data),
            "epoch": lambda: child_epoch(payload["overrides"], data),
            "featurise": lambda: child_featurise(data),
            "ttr_cft": lambda: child_ttr_cft(data, payload["folder"], payload["epochs"]),
        }
        print(json.dumps(handlers[args.child]()))
        return

    env = {**os.environ, "CFT_QUIET": "1", "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    sections = {x.strip() for x in args.sections.split(",") if x.strip()}
    unknown = sections - {"throughput", "featurisation", "scaling", "time-to-result"}
    if unknown:
        parser.error(f"unknown --sections {', '.join(sorted(unknown))}")
    steps, reps = (60, 1) if args.quick else (200, 3)
    reps, steps = args.repetitions or reps, args.steps or steps
    modes = select_modes(args.modes)
    started = time.perf_counter()
    command = ["python", "benchmarks/speed.py"] + (["--quick"] if args.quick else []) + ([f"--repetitions {args.repetitions}"] if args.repetitions else [])
    command += [f"--sections {args.sections}"] if args.sections != parser.get_default("sections") else []
    command += ([f"--steps {args.steps}"] if args.steps else []) + (["--no-inference"] if args.no_inference else []) + ([f"--modes '{args.modes}'"] if args.modes else [])
    if "time-to-result" in sections:
        command += ([f"--ttr-epochs {args.ttr_epochs}"] if args.ttr_epochs else []) + (
            [f"--ttr-chemprop-epochs {','.join(map(str, args.ttr_chemprop_epochs))}"] if args.ttr_chemprop_epochs else [])
    result = {"machine": machine(), "quick": args.quick, "batch_size": BATCH, "steps": steps, "repetitions": reps, "command": " ".join(command)}
    print(f"machine: {result['machine']}", flush=True)

    if "featurisation" in sections or "throughput" in sections:
        # warm the featurisation cache for every dataset used below, then measure featurisation
        result["featurisation"] = run_child("featurise", {}, data, env)
        print(f"featurisation: {result['featurisation']}", flush=True)

    if "throughput" in sections:
        runs: dict[str, list[dict]] = {m: [] for m in modes}
        for rep in range(reps):
            for mode, overrides in modes.items():
                if overrides is None:
                    runs[mode].append(run_child("reference", {"steps": steps}, data, env))
                else:
                    runs[mode].append(run_child("cft", {"overrides": overrides, "steps": steps, "infer": not args.no_inference}, data, env))
                last = runs[mode][-1]
                print(f"[rep {rep + 1}] {mode}: train {last['train_graphs_per_s']:.0f} g/s, infer {last['infer_graphs_per_s']:.0f} g/s, "
                      f"rss {last['peak_rss_mib']:.0f} MiB" + (f", prefix {last['prefix_seconds']:.1f} s" if last.get("prefix_seconds") else ""), flush=True)
        result["modes"] = {
            mode: {key: statistics.median(r[key] for r in values) for key in values[0] if isinstance(values[0][key], (int, float))} | {"all_train": [r["train_graphs_per_s"] for r in values]}
            for mode, values in runs.items()
        }
        m = result["modes"]
        gps = lambda name: m[name]["train_graphs_per_s"]  # noqa: E731
        result["ratios"] = {name: gps(num) / gps(den) for name, (num, den) in RATIOS.items() if num in m and den in m}
        result["ratios"]["featurisation cold / cached (target >= 20)"] = result["featurisation"]["ratio"]
        _write(args.json, result, started)

    if "scaling" in sections:
        # scaling: epoch time against molecules (MUV) and tasks (ToxCast)
        sizes = [1000, 4000] if args.quick else [1000, 5000, 20000, 93087]
        result["scaling_molecules"] = []
        for n in sizes:
            row = run_child("epoch", {"overrides": ["data.path=muv.csv.gz", f"data.limit={n}", "eval.metric=ap"]}, data, env)
            row["limit"] = n
            result["scaling_molecules"].append(row)
            print(f"MUV {n}: {row}", flush=True)
        import pandas as pd

        toxcast_tasks = [c for c in pd.read_csv(data / "toxcast.csv.gz", nrows=1).columns if c != "smiles"]
        limit = 2000 if args.quick else 8576
        result["scaling_tasks"] = []
        for t in (12, 100, len(toxcast_tasks)):
            tasks = json.dumps(toxcast_tasks[:t])
            row = run_child("epoch", {"overrides": ["data.path=toxcast.csv.gz", f"data.limit={limit}", f"data.tasks={tasks}"]}, data, env)
            result["scaling_tasks"].append(row)
            print(f"ToxCast {t} tasks: {row}", flush=True)
        _write(args.json, result, started)

    if "time-to-result" in sections:
        result["time_to_result"] = time_to_result(data, env, args.ttr_epochs, args.ttr_chemprop_epochs)
        _write(args.json, result, started)
    print(json.dumps(result.get("ratios", {}), indent=2))
    print(f"total {result['seconds']:.0f}s; wrote {args.json}")


def time_to_result(data: Path, env: dict, epochs: int | None, chemprop_epochs: list[int] | None) -> dict:
    """cft's default recipe against chemprop's defaults on one split file, one after the other:
    cft for `epochs` (None: the recipe's), chemprop once per entry of `chemprop_epochs` (None:
    cft's epochs and TTR_CHEMPROP_EPOCHS)."""
    if not PEERS_PYTHON.exists():
        print(f"time to result: {PEERS_PYTHON} is missing; skipped (see the module docstring to create it)", flush=True)
        return {"skipped": f"{PEERS_PYTHON.relative_to(REPO)} missing"}
    folder = Path(tempfile.mkdtemp(prefix="cft-ttr-"))
    write_split_files(data, folder)
    epochs = epochs or recipe_epochs()
    chemprop_epochs = chemprop_epochs or sorted({epochs, TTR_CHEMPROP_EPOCHS})
    row: dict = {"epochs": epochs, "split": "cft's scaffold split of tox21.csv (recipes/tox21.yaml, seed 0) as one split file"}
    row["cft"] = run_child("ttr_cft", {"folder": str(folder), "epochs": epochs}, data, env)
    print(f"time to result: cft {row['cft']}", flush=True)
    peers_env = {k: v for k, v in env.items() if k != "PYTHONPATH"}
    row["chemprop_runs"] = []
    for n in chemprop_epochs:
        row["chemprop_runs"].append(ttr_chemprop(folder, n, peers_env))
        print(f"time to result: chemprop {row['chemprop_runs'][-1]}", flush=True)
    row["wall_clock_cft_over_chemprop"] = {str(r["epochs"]): row["cft"]["wall_seconds"] / r["wall_seconds"] for r in row["chemprop_runs"]}
    return row


def _write(path: Path, result: dict, started: float) -> None:
    """Write what is measured so far (a long run keeps its finished sections if a later one fails)."""
    result["seconds"] = time.perf_counter() - started
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
