"""Peers benchmark: cft's adapters beside full fine-tuning, head only, GIN-VN from scratch, chemprop
and PEFT's LoRA, on one dataset (Tox21, ToxCast or ESOL) and one scaffold split file that every method reads.

    python benchmarks/peers.py [--dataset tox21|toxcast|esol] [--quick] [--seeds 3] [--epochs N]
                               [--methods adapters,adapters-former,adapters-top,adapters-mlp,mlp-k1-r24,output-k1-r24,hidden-k1-r16,hidden-k1-r16-linear,adapters-hidden-linear,both-k1-r12-linear,both-k1-r12-linear-s067,both-k1-r12-linear-b64,adapters-both-linear,adapters-linear,adapters-frozen-dropout,adapters-plain-routes,adapters-entropy-0.001,adapters-entropy-0.01,adapters-entropy-0.1,adapters-entropy-1,adapters-entropy-0.01-balance-0.01,adapters-entropy-0.01-balance-0.1,pairnorm-entropy-balance-0.01,pairnorm-entropy-balance-0.1,head,full,scratch,chemprop,lora,lora-vn,lora-bn,lora-bn-batch,lora-vn-emb,lora-vn-emb-lr005]
                               [--split-seed N] [--limit N] [--backbone FILE] [--data ../shared/data] [--jobs 2] [--threads 1]

Datasets (`--dataset`, table DATASETS: recipe, CSV, task columns, task type (cft's and chemprop's
`--task-type`), metric, chemprop's `--metrics`):

- `tox21` (default): recipes/tox21.yaml on tox21.csv, 12 binary tasks, ROC-AUC (higher is better);
  chemprop `--task-type classification --metrics roc`;
- `toxcast`: recipes/toxcast.yaml on toxcast.csv.gz, every column but `smiles` a binary task (617,
  read from the CSV's header; cft drops a task with no label in the rows it reads and says so in
  the run's dropped_tasks.json), ROC-AUC; chemprop `--task-type classification --metrics roc`;
- `esol`: recipes/esol.yaml on delaney-processed.csv (ESOL), the one regression task `measured log
  solubility in mols per litre` (the file's other numeric columns are descriptors and a published
  model's prediction, never tasks), RMSE in log10(mol/L) (lower is better); chemprop
  `--task-type regression --metrics rmse`. cft standardises the targets on the training split
  (its own mean/std, kept in the bundle) and every method is scored in label units.

The split is cft's scaffold split of the dataset's CSV (its recipe: 80/10/10, the rows RDKit
parses), written once, by the first invocation, as `<dataset>_split.csv` (those rows, plus a
`split` column for people) and `<dataset>_splits.json` (chemprop's `--splits-file`: row indices of
that CSV) in the result folder's `split/`. Every method reads the JSON file: cft through
`data.split.method=file`, chemprop through `--splits-file`, the LoRA runs through cft's own
loader with the same overrides. The result file records the SHA-256 of both files.
`--split-seed N` repeats a comparison on another scaffold split: cft's balanced scaffold split of
seed N (`data.split.method=scaffold_balanced`, `data.split.seed=N`) in `split-balanced<N>/`, its
runs in `<dataset>-balanced<N>/`, its result file `peers[_<dataset>]_balanced<N>.json`.

Methods (one run per method and seed, each in its own folder under benchmarks/results/peers/<dataset>/;
a run whose summary.json exists is skipped, so a stopped benchmark continues where it stopped;
cft runs continue mid-run from their checkpoint, LoRA runs from their last finished epoch,
chemprop runs start again; a finished cft or LoRA run keeps `code_commit.txt`, the last commit of
the cft/ and recipes/ it trained with, which the result file's rows carry and report.py names
where it is not the header's):

- `adapters`: `cft train recipes/<dataset>.yaml` as shipped, on the shared backbone file
  (`--set backbone.path=FILE backbone.pretrained=null backbone.pretrain=null`; by default FILE is the
  backbone the recipes name, cft/pretrained/gin-vn-300x5-masking-hiv.safetensors);
- `adapters-former`: the recipe with the adapters it had before it took linear ones on both GIN MLP
  Linears (`FORMER`: routed K=4, ToxCast K=8, r=8 GELU adapters on the layer outputs). Every
  method below starts from these, whatever the recipes say now (their runs were measured so);
- `adapters-top`: the former recipe with the adapters in layers 3-4 only (`adapters.layers=[3,4]`):
  the frozen layers below are computed once per molecule and cached (`train.prefix_cache`), which
  is what makes adapter training several times cheaper than full fine-tuning (BENCHMARKS.md);
- `adapters-mlp`: the same recipe with the adapters beside each layer's GIN MLP, before its
  BatchNorm (`adapters.placement=mlp`), where LoRA's updates act;
- `mlp-k1-r24`, `output-k1-r24`: one adapter of rank 24 per layer (72,000 weights, LoRA r=8's
  count), beside the MLP and on the output: placement and routing separated at PEFT's budget;
- `hidden-k1-r16`: one adapter of rank 16 whose update (d -> 2d) is added to the GIN MLP's first
  Linear, before its BatchNorm and ReLU (`adapters.placement=mlp-hidden`; 72,000 weights);
- `hidden-k1-r16-linear`, `adapters-linear`: the same with `adapters.activation=identity` (LoRA's
  linear update V U z): LoRA r=16 on the MLP's first Linear, and the default recipe with linear adapters;
- `adapters-hidden-linear`: the recipe's routed bank (K=4) in the MLP's hidden layer with linear experts;
- `both-k1-r12-linear`, `adapters-both-linear`: linear adapters on both MLP Linears (`mlp-both`), LoRA's
  places and weight count (108,000): one of rank 12 (LoRA r=12 itself), and a routed K=4 r=3 bank;
- `both-k1-r12-linear-s067`: the rank-12 one at PEFT's scale alpha/r = 8/12;
- `adapters-frozen-dropout`: the recipe with the frozen backbone's dropout on while the adapters
  train (`backbone.frozen_dropout=0.5`);
- `adapters-frozen-bf16-*`: the recipe with the frozen products in bf16 and one lever of #13's
  seed-to-seed spread: `-loss` (best epoch on the validation loss), `-s067` (LoRA's scale 8/12),
  `-ema-dropout`, `-lr1e-3`, `-ema-lr1e-3`, `-s067-ema995`, `-s067-ema998` (what
  recipes/tox21.yaml took: scale 8/12, EMA 0.995), and `-s067-ema995-r18` (that at rank 18, 4.9% of
  the backbone); `adapters-vn-r10`, `adapters-vn-r12`: that recipe with the same pair of banks on
  the virtual-node MLPs too (`adapters.virtual_node=true`; rank 10: 162,000 weights, 4.9%; rank 12:
  194,400, 5.8%); `adapters-vn-emb-r10`: that at rank 10 with a bank on the atom embeddings too
  (`adapters.embeddings=true`; 166,740, 4.998%), `adapters-emb`: the recipe with the embeddings'
  bank alone (113,688, 3.4%: what recipes/tox21.yaml took); `recipe-emb`, `recipe-vn-r10`,
  `recipe-vn-emb-r10`: the same options on the dataset's recipe as it is (recipes/esol.yaml has
  neither the scale nor the weight average), and `recipe-vn6`: the dataset's recipe plus the
  virtual-node MLPs at their own rank 6 (`adapters.virtual_node_rank=6`; on Tox21 156,888 weights,
  4.7%), `recipe-emb36`: the dataset's recipe with the embeddings' bank at rank 36
  (`adapters.embeddings_rank=36`; on Tox21 125,064 weights, 3.7%). Every method but these and `adapters` starts from the recipe as it was before the
  scale, the weight average, the embeddings' bank, Tox21's peak lr 0.005 and its virtual node's banks
  at rank 10 (`before_recipe_changes`: rank 12, no virtual-node banks;
  PEFT LoRA and head only train at lr 0.003 as well; the `recipe-*` rows measured before 828e27d
  ran on the recipe at 0.003, which their run folders' `code_commit.txt` records);
- one-setting screens of the dataset's recipe as it is (`recipe-*`, each its comment in PEERS):
  `recipe-wd01`, `recipe-dropout01` (weight decay, adapter dropout), `recipe-r16` (rank),
  `recipe-lr005`, `recipe-lr008` (peak lr), `recipe-loraplus4`, `recipe-loraplus16`
  (`train.up_lr_ratio`), `recipe-frozen-dropout05`, `recipe-frozen-dropout02`
  (`backbone.frozen_dropout`), `recipe-frozen-bf16`, `recipe-frozen-bf16-lr003`
  (`train.frozen_bf16=true`, at the recipe's lr and at 0.003), `recipe-frozen-bf16-backward`
  (`train.frozen_bf16=backward`, on the recipe with the virtual node's banks at rank 10: since
  recipes/tox21.yaml took it, the recipe as shipped, and `recipe-vn-r10` runs with it too; its
  earlier rows ran with the products in fp32, as their run folders' `recipe.yaml` records),
  `recipe-input-grads-bf16` (`train.frozen_bf16=backward` on the dataset's recipe as shipped) and `recipe-frozen-fp32` (`false`),
  `recipe-warmup2`, `recipe-ema998`
  (`train.warmup_epochs=2`, `train.ema=0.998`), `recipe-b128-lr007` (`train.batch_size=128`,
  `train.lr=0.007`);
- `default-input-grads-bf16`, `default-frozen-fp32`: recipes/default.yaml's settings (the Tox21
  recipe less its virtual-node and embedding banks, scale, weight average and step size, at batch
  32) with `train.frozen_bf16` backward and false;
- `adapters-plain-routes`: the recipe with plain routes, `prior.norm=none` and no route terms in
  the loss (recipes/tox21.yaml's own settings; recipes/toxcast.yaml's until it took PairNorm and
  the two route terms);
- `adapters-entropy-<beta>`, `adapters-entropy-0.01-balance-<gamma>`, `pairnorm-entropy-balance-<g>`:
  plain routes plus the route-entropy term (`train.route_entropy`), the balance term
  (`train.route_balance`) and PairNorm on the propagated task embeddings (`prior.norm=pairnorm`);
  rows carry the last layer's routing entropy and how many of its adapters the tasks choose;
- `head`, `full`, `scratch`: head only, full fine-tuning and GIN-VN from scratch through the same
  CLI, with the `--set` lists of benchmarks/quality.py's METHODS;
- `chemprop`: chemprop 2.3.1 with its defaults (`chemprop train`; only the epochs are set, to the
  same number as every other method; its own model selection on validation loss), seeds through
  `--pytorch-seed`/`--data-seed`; valid and test scored by `cft.metrics.score` with the dataset's
  metric (the valid rows from `chemprop predict` with its best model, the test rows from its own
  test predictions);
- `lora`: `peft.LoraConfig(r=8)` + `get_peft_model` on the Linear layers of every GIN MLP
  (`backbone.convs.<i>.conv.nn.0` and `.nn.3`, see cft/nn/backbone.py) of the same frozen backbone
  (loaded by `cft.files.backbone.load_backbone`; BatchNorm in eval mode, no dropout, as cft's
  frozen backbone), and cft's fresh linear head on the pooled representation (the head-only model
  of `cft.training.build`). It trains with cft's pieces: the head-only recipe's batches
  (`StoreBatches`, the same seeded epoch order), cft's loss (`CftModel.task_loss`: masked BCE on
  Tox21, masked MSE on the standardised targets on ESOL), AdamW and the cosine schedule
  (`cft.training.optim`), gradient clipping, early stopping on the valid metric (ROC-AUC or RMSE,
  `cft.metrics.better` knows which way is better) with the recipe's patience, test at the best
  valid epoch, scored by `cft.metrics` (OGB's evaluator);
- `lora-vn`, `lora-bn`, `lora-bn-batch`: `lora` plus one thing its GIN-MLP targets leave as the
  masked pretraining made it (what full fine-tuning moves and LoRA does not): LoRA at half the rank
  on the virtual-node MLPs' Linears (`vn_mlps.<i>.0` and `.3`, alpha halved too: the same scale);
  every BatchNorm's gain and shift trainable (still on the pretraining statistics); every BatchNorm
  in training mode while training (batch statistics; the running statistics move to the training
  molecules', which is what full fine-tuning's norms do); `lora-vn-emb`: `lora-vn` plus LoRA at a
  third of the rank on the atom encoder's embedding tables; `lora-vn-emb-lr005`: that at
  recipes/tox21.yaml's peak lr 0.005 (every other LoRA method trains at 0.003, the lr its rows were
  measured at). Their folders are `<method>-r<rank>`.

Every method gets the recipe's epochs (30) and early stopping (patience 10) unless --epochs says
otherwise; chemprop has no early stopping by default and runs them all (with fewer epochs than its
2 warm-up epochs, as in --quick, its warm-up is cut to epochs - 1: it refuses otherwise).

Parameters: `trainable` and `total` per run; `trainable_outside_heads` leaves out the linear task
head of the cft models and LoRA ((d + 1) x tasks: 3,612 on Tox21, 301 on ESOL) and chemprop's FFN
predictor (its head). With recipes/tox21.yaml's adapters (K=4, r=8, every layer) cft trains 106,656 weights outside the
head; LoRA r=8 on the 10 GIN MLP Linear layers trains 8 x (300 + 600) x 10 = 72,000, and
`--lora-rank 12` 108,000 (the closest to equal; its runs go to their own folder, lora-r12, and
their rows join the result file beside those of r=8).

chemprop and peft never become cft dependencies: they run from the benchmark's own environment
(chemprop as a CLI; the LoRA runs import cft and peft there); the cft methods run from the Python
that runs this script:

    python3 -m venv benchmarks/.venv-peers
    benchmarks/.venv-peers/bin/pip install torch==2.13.0 chemprop==2.3.1
    benchmarks/.venv-peers/bin/pip install torch==2.13.0 peft -e .

Commands (from the repository root, in cft's own environment, e.g. .venv-test/bin/python):

    python benchmarks/peers.py --quick --jobs 1 --threads 1     # check: ~1 minute of one core
    python benchmarks/peers.py --jobs 2 --threads 1             # the benchmark: 3 seeds x 6 methods
    python benchmarks/peers.py --jobs 2 --threads 1 --methods lora --lora-rank 12   # LoRA at cft's parameter count
    python benchmarks/peers.py --dataset esol --quick --jobs 1 --threads 1     # ESOL check
    python benchmarks/peers.py --dataset esol --jobs 2 --threads 1             # ESOL: 3 seeds x 7 methods on 902 training molecules

The full run was estimated from the quick run's per-epoch times (x 19.6 for 6,258 training
molecules against 320; the adapters' estimate, 11.6 s an epoch on one thread, matches the
12-13 s of the routing study's full-data runs): about 6.5 min per run for the adapters and LoRA,
3.5 for head only, 10 for full fine-tuning and from scratch, ~6 for chemprop, so ~42 min of one
core per seed and 1-1.3 hours of wall clock for 3 seeds on 2 idle cores (2 jobs x 1 thread),
less where early stopping ends runs before 30 epochs.

The timings above are Tox21's; ESOL's 902 training molecules (1,128 in all) make its runs about
7x shorter.

Result: benchmarks/results/peers.json (peers_quick.json with --quick or --limit) for Tox21, peers_toxcast.json for ToxCast,
peers_esol.json (peers_esol_quick.json) for ESOL, with the `dataset`, `metric` and `tasks` fields;
rewritten atomically after every finished run, with every finished run found in the
run folders (so a --methods subset keeps the other methods' rows).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import NamedTuple

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from provenance import machine  # noqa: E402
from quality import METHODS, ROUTED, ROUTED_K, _code_commit, _commit, recipes_backbone, run_one, shared_overrides  # noqa: E402
from speed import PEERS_PYTHON, RECIPES_ADAPTERS, RECIPES_ADAPTERS_L14, TTR_TASKS, write_split_files  # noqa: E402

from cft.training.inference import cpu_has_amx  # noqa: E402


class Dataset(NamedTuple):
    """One dataset of the comparison: the cft recipe whose split is the shared split file, the CSV
    it reads (under --data), its task columns, and how cft and chemprop are told the kind of task."""

    recipe: str
    csv: str
    tasks: tuple[str, ...] | None  # None: every column of the CSV but `smiles` (ToxCast's 617), read by `resolved`
    task_type: str  # cft's data.task_type (tox21.yaml leaves it `auto`: every label is 0/1), also chemprop's --task-type
    metric: str  # cft's eval.metric: every method is scored by cft.metrics with it
    chemprop_metric: str  # chemprop train --metrics (its own model selection uses its validation loss)


DATASETS = {
    "tox21": Dataset("recipes/tox21.yaml", "tox21.csv", tuple(TTR_TASKS), "classification", "rocauc", "roc"),
    # ESOL: one regression task; the other numeric columns of the file are descriptors, never tasks
    "esol": Dataset("recipes/esol.yaml", "delaney-processed.csv", ("measured log solubility in mols per litre",), "regression", "rmse", "rmse"),
    "toxcast": Dataset("recipes/toxcast.yaml", "toxcast.csv.gz", None, "classification", "rocauc", "roc"),
}


def resolved(ds: Dataset, data: Path) -> Dataset:
    """`ds` with its task columns named: a dataset whose tasks are every column but the SMILES
    (ToxCast) reads them from its CSV's header."""
    import pandas as pd

    if ds.tasks is not None:
        return ds
    return ds._replace(tasks=tuple(c for c in pd.read_csv(data / ds.csv, nrows=0).columns if c != "smiles"))
# The adapters of the recipes before they took linear adapters on both GIN MLP Linears (b57855d and
# earlier): routed banks of rank 8 with GELU on the layer outputs, K=4 (ToxCast K=8). Every method
# below but `adapters` starts from them, so a method keeps meaning what it was measured as whatever
# the recipes say now; `{former_k}` is filled in per dataset (`method_sets`).
FORMER = METHODS["full method (label prior)"] + ROUTED + ["adapters.num_adapters={former_k}"]
# the route settings every route-term method starts from (see adapters-plain-routes)
PLAIN_ROUTES = FORMER + ["prior.norm=none", "train.route_entropy=0", "train.route_balance=0"]
# the recipes' adapters since 92a95a3 (but ToxCast's): one linear rank-12 update on both GIN MLP Linears
BOTH_K1_R12 = RECIPES_ADAPTERS

# the recipes' adapters at chemprop's batch of 64 (recipes/tox21.yaml's since 81dd543); every
# method built on it differs from it in one setting. Methods with the same overrides but another
# id (`-norouter`) were trained at another commit of cft/ and keep their own run folders.
# fp32 products, as every run of these methods had before train.frozen_bf16 (whose `auto` is both products bf16 on an AMX CPU)
BOTH_K1_R12_B64 = FORMER + BOTH_K1_R12 + ["train.batch_size=64", "train.frozen_bf16=false"]

# recipes/tox21.yaml's scale and weight average over the recipe as it was (BEFORE_RECIPE_CHANGES),
# with the frozen products in bf16 pinned (what `auto` gives on an AMX CPU): the base of the methods
# that measure one thing on top of the Tox21 recipe
TOX21_SETTINGS = METHODS["full method (label prior)"] + ["train.frozen_bf16=true", "adapters.scale=0.6667", "train.ema=0.995"]
# recipes/default.yaml's model and schedule written over the dataset's recipe (a test holds them equal)
DEFAULT_RECIPE = METHODS["full method (label prior)"] + ["adapters.rank=12", "adapters.virtual_node=false", "adapters.embeddings=false",
                                                          "adapters.scale=1", "train.ema=null", "train.lr=0.003", "train.batch_size=32"]

# id -> (name in the result file, --set list of a cft run or None for a peer); main() names the dataset's recipe in `adapters`
PEERS = {
    "adapters": ("cft adapters (recipes/tox21.yaml)", METHODS["full method (label prior)"]),
    # the dataset's recipe validated, chosen and saved on an exponential moving average of the
    # adapter and head weights (train.ema): 0.995 spans about the last 200 steps, 0.99 the last 100
    "adapters-ema995": ("cft adapters, the recipe with weights averaged (EMA 0.995)", METHODS["full method (label prior)"] + ["train.ema=0.995"]),
    # the dataset's recipe with the frozen backbone's GIN MLP products in bf16 while training (steps
    # and per-epoch validation; final scores fp32): the speed lever on a CPU with AMX tiles
    "adapters-frozen-bf16": ("cft adapters, the recipe with the frozen products in bf16", METHODS["full method (label prior)"] + ["train.frozen_bf16=true"]),
    # the same, the best epoch (and early stopping) judged on the validation loss, as chemprop's
    # val_loss monitor does, instead of the metric: #13's seed-to-seed spread lever
    "adapters-frozen-bf16-loss": ("cft adapters, the recipe with the frozen products in bf16, epoch chosen on valid loss",
                                  METHODS["full method (label prior)"] + ["train.frozen_bf16=true", "train.select_on=loss"]),
    # #13's spread levers on the bf16 recipe: PEFT's LoRA scale alpha/r = 8/12 (a smaller step of the
    # update V U z; cft's scale is 1), and the weight average with the frozen backbone's dropout on
    # (both narrowed the spread alone on a few seeds: "Layer 0's adapters and averaged weights",
    # "The frozen backbone's dropout while the adapters train")
    "adapters-frozen-bf16-s067": ("cft adapters, the recipe with the frozen products in bf16, scale 8/12",
                                  METHODS["full method (label prior)"] + ["train.frozen_bf16=true", "adapters.scale=0.6667"]),
    "adapters-frozen-bf16-ema-dropout": ("cft adapters, the recipe with the frozen products in bf16, EMA 0.995, frozen dropout 0.5",
                                         METHODS["full method (label prior)"] + ["train.frozen_bf16=true", "train.ema=0.995", "backbone.frozen_dropout=0.5"]),
    # chemprop's learning rate 0.001 (the recipe's is 0.003), alone and with the weight average: a
    # slower rise whose best epoch comes later, where the cosine schedule's rate is small; neither
    # costs step time (the frozen dropout does: torch's CPU dropout draws every mask element)
    "adapters-frozen-bf16-lr1e-3": ("cft adapters, the recipe with the frozen products in bf16, lr 0.001",
                                    METHODS["full method (label prior)"] + ["train.frozen_bf16=true", "train.lr=0.001"]),
    "adapters-frozen-bf16-ema-lr1e-3": ("cft adapters, the recipe with the frozen products in bf16, EMA 0.995, lr 0.001",
                                        METHODS["full method (label prior)"] + ["train.frozen_bf16=true", "train.ema=0.995", "train.lr=0.001"]),
    # the speed-neutral levers together: LoRA's scale 8/12 with the weight average (EMA 0.995 about the
    # last 200 steps, 0.998 about the last 500: two of the recipe's ~98-step epochs, or five)
    "adapters-frozen-bf16-s067-ema995": ("cft adapters, the recipe with the frozen products in bf16, scale 8/12, EMA 0.995",
                                         TOX21_SETTINGS),
    "adapters-frozen-bf16-s067-ema998": ("cft adapters, the recipe with the frozen products in bf16, scale 8/12, EMA 0.998",
                                         METHODS["full method (label prior)"] + ["train.frozen_bf16=true", "adapters.scale=0.6667", "train.ema=0.998"]),
    # the recipe as it is now at rank 18: 162,000 weights, 4.9% of the backbone (#13's 5% ceiling),
    # against full fine-tuning's lead on validation (0.811 against 0.802 over its first seeds on the Xeon)
    "adapters-frozen-bf16-s067-ema995-r18": ("cft adapters, the recipe with the frozen products in bf16, scale 8/12, EMA 0.995, rank 18",
                                             TOX21_SETTINGS + ["adapters.rank=18"]),
    # the recipe with the same pair of banks on the virtual node's MLPs too (adapters.virtual_node), where
    # PEFT LoRA on those Linears (`lora-vn`) gained over LoRA on the GIN MLPs alone: at rank 10, 162,000
    # weights (4.9% of the backbone), and at the recipe's rank 12, 194,400 (5.8%: over #13's ceiling)
    "adapters-vn-r10": ("cft adapters, the recipe plus the virtual-node MLPs, rank 10",
                        TOX21_SETTINGS + ["adapters.virtual_node=true", "adapters.rank=10"]),
    "adapters-vn-r12": ("cft adapters, the recipe plus the virtual-node MLPs, rank 12",
                        TOX21_SETTINGS + ["adapters.virtual_node=true"]),
    # the atom encoder's embeddings adapted too (adapters.embeddings), where PEFT LoRA on the encoder's
    # tables with the virtual-node MLPs (`lora-vn-emb`) reached full fine-tuning's level: with the
    # virtual node's banks at rank 10, 166,740 weights (4.998% of the backbone); alone at rank 12, 113,688
    "adapters-vn-emb-r10": ("cft adapters, the recipe plus the virtual-node MLPs and the atom embeddings, rank 10",
                            TOX21_SETTINGS + ["adapters.virtual_node=true", "adapters.embeddings=true", "adapters.rank=10"]),
    "adapters-emb": ("cft adapters, the recipe plus the atom embeddings",
                     TOX21_SETTINGS + ["adapters.embeddings=true"]),
    # the dataset's own recipe as it is plus one option (no setting put back first: ON_THE_RECIPE), for
    # recipes that did not take tox21.yaml's scale and weight average (recipes/esol.yaml)
    "recipe-emb": ("cft adapters, the dataset's recipe plus the atom embeddings", METHODS["full method (label prior)"] + ["adapters.embeddings=true"]),
    # the recipe plus the virtual node's banks at their own rank 6 (adapters.virtual_node_rank), the
    # GIN MLPs and the embeddings keeping rank 12: PEFT `lora-vn-emb`'s rank pattern (on Tox21
    # 156,888 weights, 4.7% of the backbone)
    "recipe-vn6": ("cft adapters, the dataset's recipe plus the virtual-node MLPs at rank 6",
                   METHODS["full method (label prior)"] + ["adapters.virtual_node=true", "adapters.virtual_node_rank=6"]),
    # the recipe's embeddings' bank at rank 36 (adapters.embeddings_rank; 17,064 weights, 125,064 in
    # all, 3.7%): PEFT `lora-vn-emb`'s LoRA r=4 on each of the nine tables is a rank-36 update of
    # the encoder seen as one table
    "recipe-emb36": ("cft adapters, the dataset's recipe with the embeddings' bank at rank 36",
                     METHODS["full method (label prior)"] + ["adapters.embeddings=true", "adapters.embeddings_rank=36"]),
    # regularisers the recipe has not tried (its adapters' validation score peaks near epoch 20 of
    # 30 and falls while the training loss keeps falling): AdamW's weight decay on every trained
    # weight (decoupled; torch's default is 0.01, cft's 0) and dropout on the adapters' inputs
    # (PEFT's lora_dropout)
    "recipe-wd01": ("cft adapters, the dataset's recipe with weight decay 0.1", METHODS["full method (label prior)"] + ["train.weight_decay=0.1"]),
    "recipe-dropout01": ("cft adapters, the dataset's recipe with adapter dropout 0.1", METHODS["full method (label prior)"] + ["adapters.dropout=0.1"]),
    # capacity and step size, the two knobs of the recipe's GIN-MLP banks not yet screened with the
    # embeddings' bank: rank 16 everywhere (151,584 weights, 4.5% of the backbone) and peak lr 0.005
    # and 0.008 (validation rose from 0.001 to 0.003 to 0.005; Tox21's recipe took 0.005 in 828e27d)
    "recipe-r16": ("cft adapters, the dataset's recipe at rank 16", METHODS["full method (label prior)"] + ["adapters.rank=16"]),
    "recipe-lr005": ("cft adapters, the dataset's recipe with peak lr 0.005", METHODS["full method (label prior)"] + ["train.lr=0.005"]),
    "recipe-lr008": ("cft adapters, the dataset's recipe with peak lr 0.008", METHODS["full method (label prior)"] + ["train.lr=0.008"]),
    # LoRA+ (train.up_lr_ratio): the banks' up-projections V at 4x and 16x the peak lr
    "recipe-loraplus4": ("cft adapters, the dataset's recipe with LoRA+ ratio 4", METHODS["full method (label prior)"] + ["train.up_lr_ratio=4"]),
    "recipe-loraplus16": ("cft adapters, the dataset's recipe with LoRA+ ratio 16", METHODS["full method (label prior)"] + ["train.up_lr_ratio=16"]),
    # the frozen backbone's dropout on while the adapters train (backbone.frozen_dropout; BatchNorm
    # keeps the pretraining statistics): on the Xeon's ten seeds of the recipe at 0.003 without the
    # embeddings' bank it scored test +0.0018 and valid -0.005; screened here on the recipe as it is
    "recipe-frozen-dropout05": ("cft adapters, the dataset's recipe with the frozen backbone's dropout 0.5",
                                METHODS["full method (label prior)"] + ["backbone.frozen_dropout=0.5"]),
    "recipe-frozen-dropout02": ("cft adapters, the dataset's recipe with the frozen backbone's dropout 0.2",
                                METHODS["full method (label prior)"] + ["backbone.frozen_dropout=0.2"]),
    # the frozen products in bf16 pinned on (train.frozen_bf16=true; `auto` gives both only with AMX tiles):
    # the quality side of running them in bf16 on a CPU with AVX512-BF16 and no AMX (the EPYC)
    "recipe-frozen-bf16": ("cft adapters, the dataset's recipe with the frozen products in bf16",
                           METHODS["full method (label prior)"] + ["train.frozen_bf16=true"]),
    # the same at the recipe's former peak lr 0.003 (where the Xeon's ten seeds of the bf16 products
    # scored as fp32): whether a cost of the bf16 products comes with the step size or the CPU
    "recipe-frozen-bf16-lr003": ("cft adapters, the dataset's recipe with the frozen products in bf16, peak lr 0.003",
                                 METHODS["full method (label prior)"] + ["train.frozen_bf16=true", "train.lr=0.003"]),
    # only the input gradients' products in bf16 (train.frozen_bf16=backward): the forward pass, the
    # loss and validation stay fp32, whose rounding `recipe-frozen-bf16` showed to cost at lr 0.005
    "recipe-frozen-bf16-backward": ("cft adapters, the dataset's recipe with the frozen products' input gradients in bf16",
                                    METHODS["full method (label prior)"] + ["adapters.virtual_node=true", "adapters.rank=10", "train.frozen_bf16=backward"]),
    # the same on the dataset's recipe exactly as shipped (`adapters` plus frozen_bf16=backward): what
    # `auto` gives the recipes that do not set it (at lr 0.003) on a CPU with native bf16 but no AMX
    # since the ESOL runs of this method; for Tox21, whose recipe sets `backward`, the same runs as
    # `adapters`
    "recipe-input-grads-bf16": ("cft adapters, the dataset's recipe as shipped with the frozen products' input gradients in bf16",
                                METHODS["full method (label prior)"] + ["train.frozen_bf16=backward"]),
    # and with every frozen product in fp32 (train.frozen_bf16=false): what `auto` gave the recipes on
    # a CPU without AMX before it took `backward` there, the comparison for the row above
    "recipe-frozen-fp32": ("cft adapters, the dataset's recipe as shipped with the frozen products in fp32",
                           METHODS["full method (label prior)"] + ["train.frozen_bf16=false"]),
    # the schedule and the average at the recipe's peak lr 0.005, whose best epochs came late (24-30
    # of 30): a linear warmup over the first 2 epochs (chemprop's default warmup), and the weight
    # average over about 500 steps (EMA 0.998, five epochs) instead of 200
    "recipe-warmup2": ("cft adapters, the dataset's recipe with 2 warmup epochs", METHODS["full method (label prior)"] + ["train.warmup_epochs=2"]),
    "recipe-ema998": ("cft adapters, the dataset's recipe with EMA 0.998", METHODS["full method (label prior)"] + ["train.ema=0.998"]),
    # recipes/default.yaml (what `cft train --data CSV` trains) on the dataset: the Tox21 recipe less
    # its virtual-node and embedding banks, scale, weight average and step size, at batch 32 (every
    # other field the same), with the input gradients' products in bf16 (what `auto` gives it on a
    # CPU with AVX512-BF16 and no AMX) and in fp32: its quality side of that `auto`
    "default-input-grads-bf16": ("cft adapters, the default recipe's settings with the frozen products' input gradients in bf16",
                                 DEFAULT_RECIPE + ["train.frozen_bf16=backward"]),
    "default-frozen-fp32": ("cft adapters, the default recipe's settings with the frozen products in fp32", DEFAULT_RECIPE + ["train.frozen_bf16=false"]),
    # the time-to-result lever that keeps the epochs: batch 128 trains 1.2x the graphs/s of 64 on
    # the EPYC (one process), at the square-root-scaled peak lr (0.005 * sqrt 2): the recipe at 20
    # epochs scored lower on every seed, its best epochs its last (BENCHMARKS.md, "The recipe at 20 epochs")
    "recipe-b128-lr007": ("cft adapters, the dataset's recipe at batch 128, peak lr 0.007",
                          METHODS["full method (label prior)"] + ["train.batch_size=128", "train.lr=0.007"]),
    "recipe-vn-r10": ("cft adapters, the dataset's recipe plus the virtual-node MLPs, rank 10",
                      METHODS["full method (label prior)"] + ["adapters.virtual_node=true", "adapters.rank=10"]),
    "recipe-vn-emb-r10": ("cft adapters, the dataset's recipe plus the virtual-node MLPs and the atom embeddings, rank 10",
                          METHODS["full method (label prior)"] + ["adapters.virtual_node=true", "adapters.embeddings=true", "adapters.rank=10"]),
    "adapters-ema99": ("cft adapters, the recipe with weights averaged (EMA 0.99)", METHODS["full method (label prior)"] + ["train.ema=0.99"]),
    "adapters-former": ("cft adapters, the recipes before the linear ones (routed r=8 GELU on the layer outputs)", FORMER),
    # the same adapters in the top two layers only: the frozen layers 0-2 below them are computed
    # once per molecule (train.prefix_cache: memory), so an epoch costs a fraction of `adapters`
    "adapters-top": ("cft adapters, layers 3-4 (prefix cached)", FORMER + ["adapters.layers=[3,4]"]),
    # the same adapters beside each layer's GIN MLP (before its BatchNorm) instead of on its output:
    # where PEFT's LoRA acts, which beat the output adapters (BENCHMARKS.md)
    "adapters-mlp": ("cft adapters beside the GIN MLP", FORMER + ["adapters.placement=mlp"]),
    # one adapter per layer of rank 24 (no routing to learn): 5 x 2 x 300 x 24 = 72,000 weights, exactly
    # LoRA r=8's count, beside the MLP and on the output: the same-budget comparison with PEFT
    "mlp-k1-r24": ("cft, one adapter r=24 beside the GIN MLP", FORMER + ["adapters.placement=mlp", "adapters.num_adapters=1", "adapters.rank=24"]),
    "output-k1-r24": ("cft, one adapter r=24 on the layer output", FORMER + ["adapters.num_adapters=1", "adapters.rank=24"]),
    # the update added to the GIN MLP's first Linear (d -> 2d), before its BatchNorm and ReLU: LoRA's
    # place on that Linear; rank 16 on 300 + 600 is 72,000 weights, LoRA r=8's count on both Linears
    "hidden-k1-r16": ("cft, one adapter r=16 in the GIN MLP's hidden layer", FORMER + ["adapters.placement=mlp-hidden", "adapters.num_adapters=1", "adapters.rank=16"]),
    # phi = identity (LoRA's linear update V U z) instead of gelu: in the MLP's hidden layer this is
    # LoRA r=16 on the first Linear; on the output, the default recipe with linear adapters
    "hidden-k1-r16-linear": ("cft, one linear adapter r=16 in the GIN MLP's hidden layer", FORMER + [
        "adapters.placement=mlp-hidden", "adapters.num_adapters=1", "adapters.rank=16", "adapters.activation=identity"]),
    # the dataset's recipe with half the experts: K=4 r=8 puts recipes/toxcast.yaml's adapters under 5%
    # of the backbone's weights (K=8 is 6.7%), the parameter bar of the peers comparison
    "adapters-k4": ("cft adapters, the recipe with K=4 experts", FORMER + ["adapters.num_adapters=4"]),
    # the recipe's routed bank (K=4 r=8 on Tox21) added to each GIN MLP's first Linear, where LoRA acts
    # on it: 5 x 4 x 8 x (300 + 600) = 144,000 adapter weights, 4.3% of the backbone
    "adapters-hidden": ("cft adapters in the GIN MLP's hidden layer (routed)", FORMER + ["adapters.placement=mlp-hidden"]),
    # the same bank beside each GIN MLP's second Linear, on its input (LoRA's place on that Linear):
    # 5 x 4 x 8 x (600 + 300) = 144,000 adapter weights on Tox21, as `adapters-hidden`
    # the routed bank in the hidden layer with linear experts (LoRA's update V U z per expert): keeps
    # routing where one linear adapter in that place matched LoRA on validation; K=4 r=8 on every
    # dataset (144,000 adapter weights, 4.3% of the backbone; ToxCast's recipe K=8 would be 8.5%)
    "adapters-hidden-linear": ("cft adapters in the GIN MLP's hidden layer, linear (routed)", FORMER + [
        "adapters.placement=mlp-hidden", "adapters.activation=identity", "adapters.num_adapters=4"]),
    "adapters-out": ("cft adapters beside the GIN MLP's second Linear (routed)", FORMER + ["adapters.placement=mlp-out"]),
    # the recipe at chemprop's default batch of 64 (same lr, half the steps): the time-to-result lever
    # of the speed issue, since a CPU step of 64 molecules costs well under two steps of 32
    "adapters-b64": ("cft adapters, the recipe at batch 64", FORMER + ["train.batch_size=64"]),
    # the recipe without layer 0's adapters: layer 0 of the frozen backbone is then computed once per
    # molecule (prefix cache), and the step skips its forward and backward (the speed issue's 2x lever)
    "adapters-l14": ("cft adapters in layers 1-4 (layer 0 cached)", FORMER + ["adapters.layers=[1,2,3,4]"]),
    # both GIN MLP Linears at once (`mlp-both`), linear: where PEFT's LoRA acts, at its weight count.
    # K=1 r=12 is LoRA r=12 (5 x 12 x (900 + 900) = 108,000); K=4 r=3 the routed bank of the same count
    "both-k1-r12-linear": ("cft, one linear adapter r=12 on both GIN MLP Linears (the recipes' adapters but ToxCast's)", FORMER + BOTH_K1_R12),
    # the same at PEFT's scale alpha/r = 8/12 (cft's s is 1): the one setting left that differs from LoRA r=12
    "both-k1-r12-linear-s067": ("cft, one linear adapter r=12 on both GIN MLP Linears, scale 8/12", FORMER + BOTH_K1_R12 + ["adapters.scale=0.6667"]),
    # the recipes' adapters at chemprop's default batch of 64 (same lr and epochs, half the steps):
    # the time-to-result lever, since a CPU step of 64 molecules costs less than two steps of 32
    "both-k1-r12-linear-b64": ("cft, one linear adapter r=12 on both GIN MLP Linears, batch 64", BOTH_K1_R12_B64),
    # the same with the part written as `uniform` (cft.training.build.routing_mode, commit 7be9b0d):
    # no router weights at K=1, so the trainable count is LoRA r=12's 108,000 exactly
    "both-k1-r12-b64-norouter": ("cft, one linear adapter r=12 on both GIN MLP Linears, batch 64, no router", BOTH_K1_R12_B64),
    # the same with bf16 autocast of the training steps (train.bf16_cpu, da6c3fd; the EPYC has
    # native bf16 products): it kept the score, but a step gained only 1.08x (BENCHMARKS.md, "Speed")
    "both-k1-r12-b64-bf16": ("cft, one linear adapter r=12 on both GIN MLP Linears, batch 64, no router, bf16 steps", BOTH_K1_R12_B64 + ["train.bf16_cpu=true"]),
    # the 20-epoch lever with a higher peak lr (0.005 for 0.003): twenty epochs at batch 64 match
    # chemprop's wall clock but lost 0.011 of validation ROC-AUC at the recipe's lr
    "both-k1-r12-b64-lr005": ("cft, one linear adapter r=12 on both GIN MLP Linears, batch 64, no router, lr 0.005", BOTH_K1_R12_B64 + ["train.lr=0.005"]),
    # the same weight count without layer 0's adapters (rank 15 on layers 1-4 = 108,000 weights, LoRA
    # r=12's): layer 0 of the frozen backbone is computed once per molecule (prefix cache), the speed
    # issue's lever to 2x full fine-tuning, if the score holds
    "both-k1-r15-l14-b64": ("cft, one linear adapter r=15 on both GIN MLP Linears of layers 1-4 (layer 0 cached), batch 64",
                            FORMER + RECIPES_ADAPTERS_L14 + ["train.batch_size=64"]),
    # the recipe at commit b01c3d5/d5254ba (bond embeddings as one lookup, no per-node weight at K=1: the
    # same model, other float rounding) on this machine: the baseline of the weight average below
    "both-k1-r12-b64-d5254ba": ("cft, one linear adapter r=12 on both GIN MLP Linears, batch 64 (cft/ of d5254ba)", BOTH_K1_R12_B64),
    # the same, validated, chosen and saved on an exponential moving average of the adapter and head
    # weights (train.ema = 0.995: about the last 200 steps, two epochs at batch 64)
    "both-k1-r12-b64-ema995": ("cft, one linear adapter r=12 on both GIN MLP Linears, batch 64, weights averaged (EMA 0.995)", BOTH_K1_R12_B64 + ["train.ema=0.995"]),
    "adapters-both-linear": ("cft adapters K=4 r=3 on both GIN MLP Linears, linear (routed; recipes/toxcast.yaml's adapters)", FORMER + [
        "adapters.placement=mlp-both", "adapters.num_adapters=4", "adapters.rank=3", "adapters.activation=identity"]),
    "adapters-linear": ("cft adapters, identity activation", FORMER + ["adapters.activation=identity"]),
    # the default recipe with the frozen backbone's dropout on while the adapters train (BatchNorm
    # keeps its pretraining statistics), as PEFT and AdapterGNN leave the base model in training mode
    "adapters-frozen-dropout": ("cft adapters, frozen backbone's dropout 0.5 while training", FORMER + ["backbone.frozen_dropout=0.5"]),
    # routes as recipes/toxcast.yaml had them until commit ROUTES_COMMIT (and recipes/tox21.yaml has them):
    # the label prior propagated without PairNorm, no route terms in the loss. The route-term methods
    # below start from these values, so a method means the same runs whatever the recipe's defaults.
    "adapters-plain-routes": ("cft adapters, plain routes (no PairNorm, no route terms)", PLAIN_ROUTES),
    # the routes' normalised entropy in the loss (train.route_entropy = beta): each task's gates
    # pushed towards few adapters, against the uniform routes of a dense prior
    "adapters-entropy-0.001": ("cft adapters, route entropy beta 0.001", PLAIN_ROUTES + ["train.route_entropy=0.001"]),
    "adapters-entropy-0.01": ("cft adapters, route entropy beta 0.01", PLAIN_ROUTES + ["train.route_entropy=0.01"]),
    "adapters-entropy-0.1": ("cft adapters, route entropy beta 0.1", PLAIN_ROUTES + ["train.route_entropy=0.1"]),
    "adapters-entropy-1": ("cft adapters, route entropy beta 1", PLAIN_ROUTES + ["train.route_entropy=1.0"]),
    # with the load-balancing term over tasks (train.route_balance = gamma): sharp routes that do
    # not all pick the same adapter (beta alone sent all 617 ToxCast tasks to one expert)
    "adapters-entropy-0.01-balance-0.01": ("cft adapters, route entropy 0.01 + balance 0.01", PLAIN_ROUTES + ["train.route_entropy=0.01", "train.route_balance=0.01"]),
    "adapters-entropy-0.01-balance-0.1": ("cft adapters, route entropy 0.01 + balance 0.1", PLAIN_ROUTES + ["train.route_entropy=0.01", "train.route_balance=0.1"]),
    # the same two terms with PairNorm on the propagated task embeddings (prior.norm), which keeps
    # the 617 tasks' embeddings apart after propagation over the dense label graph
    "pairnorm-entropy-balance-0.01": ("cft adapters, PairNorm prior, route entropy 0.01 + balance 0.01", PLAIN_ROUTES + [
        "prior.norm=pairnorm", "train.route_entropy=0.01", "train.route_balance=0.01"]),
    "pairnorm-entropy-balance-0.1": ("cft adapters, PairNorm prior, route entropy 0.1 + balance 0.1", PLAIN_ROUTES + [
        "prior.norm=pairnorm", "train.route_entropy=0.1", "train.route_balance=0.1"]),
    "head": ("head only", METHODS["head only"]),
    "full": ("full fine-tuning", METHODS["full fine-tuning"]),
    "scratch": ("GIN-VN from scratch", METHODS["GIN-VN from scratch"]),
    "chemprop": ("chemprop 2.3.1 (defaults)", None),
}
LORA_RANK = 8  # --lora-rank; r = 12 gives 108,000 LoRA weights, about cft's 106,656 adapter and routing weights of recipes/tox21.yaml
# the Linear layers of every GIN MLP: GINLayer.conv (PyG GINEConv) holds the MLP as `nn`,
# Sequential(Linear(d, 2d), BatchNorm1d, ReLU, Linear(2d, d)); the virtual-node MLPs are not GIN MLPs
LORA_TARGETS = r"backbone\.convs\.\d+\.conv\.nn\.(0|3)"
VN_TARGETS = r"backbone\.vn_mlps\.\d+\.(0|3)"  # the virtual-node MLPs' Linear(d, 2d) and Linear(2d, d)
EMBEDDING_TARGETS = r"backbone\.atom_encoder\.atom_embedding_list\.\d+"  # OGB's AtomEncoder: one table per atom feature
# LoRA method -> what it adds to LoRA on the GIN MLPs: `vn` LoRA at half the rank on the virtual-node
# MLPs' Linears (r = 12 + 6: 108,000 + 43,200 weights, 4.5% of the backbone); `bn` the gain and
# shift of every BatchNorm trainable (16,200 weights; normalised by the pretraining statistics, as
# cft's frozen backbone); `bn-batch` every BatchNorm in training mode while training (batch
# statistics, running statistics re-estimated on the training molecules with momentum 0.1; no
# weight added), as full fine-tuning runs them; `vn-emb` `vn` plus LoRA at a third of the rank on the
# atom encoder's nine embedding tables (rank 4: 11,496 weights; 162,696 in all, 4.9%). The methods
# after `lora` ask where full fine-tuning's lead over LoRA (and the recipe) on Tox21 comes from.
# method -> (the child's variant, what its row name adds to LoRA on the GIN MLPs; {h}, {t}: r/2, r/3)
LORA_VARIANTS = {
    "lora": ("", ""),
    "lora-vn": ("vn", " + r={h} (virtual-node MLPs)"),
    "lora-bn": ("bn", " + every BatchNorm's gain and shift"),
    "lora-bn-batch": ("bn-batch", ", BatchNorms on batch statistics"),
    "lora-vn-emb": ("vn-emb", " + r={h} (virtual-node MLPs) + r={t} (atom embeddings)"),
    "lora-vn-emb-lr005": ("vn-emb", " + r={h} (virtual-node MLPs) + r={t} (atom embeddings), peak lr 0.005"),
}
# every LoRA row trains at the head-only recipe's former peak lr 0.003 (LR_BEFORE_RECIPE_CHANGES), but
# these, at recipes/tox21.yaml's 0.005: PEFT at the step size cft's recipe took
LORA_LR = {"lora-vn-emb-lr005": "train.lr=0.005"}


def lora_name(method: str, rank: int) -> str:
    """A LoRA method's row name at `rank`, the rank(s) written in."""
    return f"PEFT LoRA r={rank} (GIN MLPs)" + LORA_VARIANTS[method][1].format(h=max(1, rank // 2), t=max(1, rank // 3))


def lora_folder(method: str, rank: int) -> str:
    """Run folder of a LoRA method: `lora` at the default rank, `<method>-r<rank>` otherwise."""
    return "lora" if method == "lora" and rank == LORA_RANK else f"{method}-r{rank}"


def lora_method(folder: str) -> str | None:
    """The LoRA method a run folder name belongs to (`lora_folder`'s inverse), None for another folder."""
    method = "lora" if folder == "lora" else folder.rsplit("-r", 1)[0]
    return method if method in LORA_VARIANTS else None


PEERS |= {m: (lora_name(m, LORA_RANK), None) for m in LORA_VARIANTS}  # main() writes --lora-rank in
FOLDERS = {m: lora_folder(m, LORA_RANK) if m in LORA_VARIANTS else m for m in PEERS}  # run folder per method id
QUICK_LIMIT, QUICK_EPOCHS = 400, 2
FOLDER_EPOCHS = 30  # the epochs of every run in a dataset's plain run folder (the recipes' epochs when they were made); others get `-epochs<N>`
CHEMPROP_WARMUP = 2  # chemprop's default --warmup-epochs
CODE_FILE = "code_commit.txt"  # in each cft and LoRA run folder: the commit of the cft/ and recipes/ that trained it
DEFAULT_BACKBONE = recipes_backbone()  # the recipes' shipped backbone (benchmarks/backbones/ before 2026-12-06)


# ----------------------------------------------------------------- the split file


def check_dataset(name: str, ds: Dataset, recipe) -> None:
    """The table row `ds` (resolved) must describe its recipe: chemprop reads its columns, cft the recipe's."""
    ours, theirs = (ds.csv, list(ds.tasks), ds.task_type, ds.metric), (recipe.data.path, recipe.data.tasks, recipe.data.task_type, recipe.eval.metric)
    if recipe.data.path != ds.csv or recipe.data.tasks not in (None, list(ds.tasks)) or recipe.data.task_type not in ("auto", ds.task_type) or recipe.eval.metric != ds.metric:
        raise SystemExit(f"peers.py: DATASETS[{name!r}] {ours} disagrees with {ds.recipe} {theirs}")


def split_suffix(split_seed: int | None) -> str:
    """What names the split in folder and file names: nothing for the recipe's scaffold split,
    `-balanced<N>` for the balanced scaffold split of seed N."""
    return f"-balanced{split_seed}" if split_seed is not None else ""


def split_folder_name(limit: int | None, split_seed: int | None) -> str:
    """The split files' folder under the result root: `split` for the recipe's scaffold split,
    `split-balanced<N>` for the balanced scaffold split of seed N, with `-limit<L>` for a subset."""
    return "split" + split_suffix(split_seed) + (f"-limit{limit}" if limit is not None else "")


def split_recipe_overrides(split_seed: int | None) -> list[str]:
    """The recipe's own split (None), or cft's balanced scaffold split of seed `split_seed`."""
    return [] if split_seed is None else ["data.split.method=scaffold_balanced", f"data.split.seed={split_seed}"]


def split_files(data: Path, folder: Path, limit: int | None, name: str = "tox21", split_seed: int | None = None) -> tuple[Path, Path]:
    """The split files of dataset `name` in `folder` (`<name>_split.csv`, `<name>_splits.json`),
    written on the first call and reused after (never rewritten: finished runs were trained on
    them). `limit`: the first N rows of the full split file (in `folder`'s sibling
    `split_folder_name(None, split_seed)`), each keeping its split (a check of the pipeline, not a
    benchmark); `split_seed`: cft's `scaffold_balanced` split of that seed instead of the recipe's
    scaffold split."""
    import pandas as pd

    csv, splits = folder / f"{name}_split.csv", folder / f"{name}_splits.json"
    if csv.exists() and splits.exists():
        return csv, splits
    folder.mkdir(parents=True, exist_ok=True)
    if limit is None:
        write_split_files(data, folder, DATASETS[name].recipe, name, split_recipe_overrides(split_seed))
        return csv, splits
    full_csv, _ = split_files(data, folder.parent / split_folder_name(None, split_seed), None, name, split_seed)
    full_frame = pd.read_csv(full_csv)
    # each split's first rows, in the split's share of the full file (the first N rows of the file hold no valid molecule)
    counts = full_frame["split"].value_counts()
    keep = [i for name, n in counts.items() for i in full_frame.index[full_frame["split"] == name][: max(1, round(limit * n / len(full_frame)))]]
    frame = full_frame.loc[sorted(keep)].reset_index(drop=True)
    frame.to_csv(csv, index=False)
    chosen = {"train": [], "val": [], "test": []}
    for i, name in enumerate(frame["split"]):
        chosen["val" if name == "valid" else name].append(i)
    splits.write_text(json.dumps([chosen]))
    return csv, splits


def split_overrides(csv: Path, splits: Path) -> list[str]:
    """cft reads the rows of the split CSV and the split from the JSON file (the `split` column is no task)."""
    return [f"data.path={csv}", "data.split.method=file", f"data.split.path={splits}", "data.exclude_columns=[split]"]


# ----------------------------------------------------------------- one run of each kind


def run_folder(out: Path, tag: str, method: str, seed: int) -> Path:
    return out / tag / FOLDERS[method] / f"seed{seed}"


# recipes/tox21.yaml took LoRA's scale 8/12 and the weight average (EMA 0.995) in commit 5410d2b,
# the atom embeddings' bank after the `adapters-emb` runs, peak lr 0.005 in 828e27d, the frozen
# products pinned to fp32 (`train.frozen_bf16: false`) after the `recipe-frozen-bf16` runs, and the
# virtual node's banks at rank 10 everywhere after the `recipe-vn-r10` runs at lr 0.005; every
# method but ON_THE_RECIPE was measured without them, so they are set back first (a method's own
# sets come after and win): a method keeps meaning what its rows measured. The other datasets'
# recipes train at lr 0.003 with `auto` and no virtual-node banks too, so those pins change
# nothing there; the rank is set back on Tox21 only (ToxCast's recipe has its own). `auto` meant
# both products in bf16 on a CPU with AMX tiles and fp32 on any other until it took the input
# gradients' products in bf16 on CPUs with AVX512-BF16 alone: the pin is what it meant then.
LR_BEFORE_RECIPE_CHANGES = "train.lr=0.003"
FORMER_AUTO = "train.frozen_bf16=" + ("true" if cpu_has_amx() else "false")
BEFORE_RECIPE_CHANGES = ["adapters.scale=1", "train.ema=null", "adapters.embeddings=false", LR_BEFORE_RECIPE_CHANGES, FORMER_AUTO,
                         "adapters.virtual_node=false"]
RANK_BEFORE_RECIPE_CHANGES = {"tox21": "adapters.rank=12"}
ON_THE_RECIPE = {"adapters"} | {m for m in PEERS if m.startswith("recipe-")}  # methods measured on the recipe as it is (named recipe-*)


def before_recipe_changes(dataset: str) -> list[str]:
    """The `--set` list that puts `dataset`'s recipe back as it was before the Tox21 recipe's changes."""
    return BEFORE_RECIPE_CHANGES + ([RANK_BEFORE_RECIPE_CHANGES[dataset]] if dataset in RANK_BEFORE_RECIPE_CHANGES else [])


def method_sets(method: str, dataset: str) -> list[str]:
    """The `--set` list of a cft method on `dataset` (the former recipes' K filled in)."""
    sets = [s.format(former_k=ROUTED_K[dataset]) for s in PEERS[method][1]]
    return sets if method in ON_THE_RECIPE else before_recipe_changes(dataset) + sets


def run_cft(method: str, seed: int, ctx: dict) -> None:
    """A real `cft train` (quality.run_one: resumes from the checkpoint, skips a finished run)."""
    result = run_one(ctx["tag"], ctx["recipe"], method, seed, ctx["epochs"], ctx["shared"], ctx["out"], ctx["data"], ctx["threads"],
                     {method: method_sets(method, ctx["dataset"])}, ctx["patience"])
    if "error" in result:
        raise RuntimeError(" ".join(result["error"]))


def lora_overrides(ctx: dict, seed: int, method: str = "lora") -> list[str]:
    """The head-only recipe on the shared backbone: the LoRA model's head, loss, batches, optimiser and
    schedule, at the peak lr the LoRA rows were measured at (LR_BEFORE_RECIPE_CHANGES; LORA_LR's own)."""
    patience = ctx["patience"] or "null"
    lr = LORA_LR.get(method, LR_BEFORE_RECIPE_CHANGES)
    return ctx["shared"] + PEERS["head"][1] + [lr, f"seed={seed}", f"train.epochs={ctx['epochs']}", f"train.threads={ctx['threads']}", f"train.patience={patience}"]


def run_lora(method: str, seed: int, ctx: dict) -> None:
    folder = run_folder(ctx["out"], ctx["tag"], method, seed)
    payload = {"recipe": ctx["recipe"], "overrides": lora_overrides(ctx, seed, method), "backbone": str(ctx["backbone"]), "folder": str(folder), "rank": ctx["lora_rank"],
               "variant": LORA_VARIANTS[method][0]}
    cmd = [str(PEERS_PYTHON), __file__, "--child", "lora", "--payload", json.dumps(payload), "--data", str(ctx["data"])]
    env = {**os.environ, "CFT_QUIET": "1", "OMP_NUM_THREADS": str(ctx["threads"])}
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"LoRA run failed:\n{done.stderr[-3000:]}")


def child_lora(payload: dict, data: Path) -> None:
    """One LoRA run (in benchmarks/.venv-peers): writes checkpoint.pt after every epoch and summary.json at the end."""
    import peft
    import torch
    from torch.utils.data import DataLoader

    from cft.data.dataset import load_dataset
    from cft.files.atomic import atomic_write_json, atomic_write_with
    from cft.files.backbone import load_backbone
    from cft.metrics import better
    from cft.recipe.load import load_recipe
    from cft.training.build import build_training_model, resolve_metric, set_trainable
    from cft.training.distributed import single
    from cft.training.inference import evaluate_split
    from cft.training.optim import make_optimizer, make_scheduler
    from cft.training.prefix import StoreBatches, as_is
    from cft.training.seeding import use_deterministic_kernels

    folder = Path(payload["folder"])
    folder.mkdir(parents=True, exist_ok=True)
    recipe = load_recipe(REPO / payload["recipe"], payload["overrides"])
    tr = recipe.train
    torch.set_num_threads(tr.threads or 1)
    use_deterministic_kernels(tr.deterministic)
    dataset = load_dataset(recipe.data, data, recipe.seed)
    if dataset.skipped:  # this environment's RDKit (chemprop's pin) must parse every row the split file holds
        raise RuntimeError(f"RDKit {dataset.identity.get('rdkit', '')} in {sys.executable} cannot parse {len(dataset.skipped)} rows of the split file "
                           f"(first: {dataset.skipped[0]}); the LoRA runs would not see the same molecules")
    metric = resolve_metric(recipe, dataset)  # the recipe's eval.metric: rocauc (Tox21) or rmse (ESOL, lower is better: cft.metrics.better)
    backbone = load_backbone(payload["backbone"])
    # frozen backbone + fresh linear head (seeded); regression targets standardised with the training
    # split's mean/std (build.target_statistics), outputs in label units, as in every cft run
    model, _ = build_training_model(recipe, dataset, backbone)
    set_trainable(model, recipe)
    variant, rank = payload.get("variant", ""), payload["rank"]
    targets = {"vn": f"({LORA_TARGETS})|({VN_TARGETS})", "vn-emb": f"({LORA_TARGETS})|({VN_TARGETS})|({EMBEDDING_TARGETS})"}.get(variant, LORA_TARGETS)
    # vn: half the rank on the virtual-node MLPs (a third on the embeddings), alpha scaled with it so
    # that every scale alpha / r is the GIN MLPs' (8 / r)
    ranks = {VN_TARGETS: max(1, rank // 2)} if variant in ("vn", "vn-emb") else {}
    ranks |= {EMBEDDING_TARGETS: max(1, rank // 3)} if variant == "vn-emb" else {}
    patterns = {"rank_pattern": ranks, "alpha_pattern": {k: 8 * r / rank for k, r in ranks.items()}} if ranks else {}
    config = peft.LoraConfig(r=rank, target_modules=targets, lora_dropout=0.0, bias="none", **patterns)
    peft_model = peft.get_peft_model(model, config)  # LoRA layers injected in place into model.backbone
    model.head.requires_grad_(True)  # get_peft_model froze everything else; the head trains, as in cft
    norms = [m for m in model.backbone.modules() if isinstance(m, torch.nn.BatchNorm1d)]
    if variant == "bn":
        for norm in norms:
            norm.requires_grad_(True)  # gain and shift; the folded norm (cft.nn.backbone) passes their gradients
    lora_layers = sorted({n.rsplit(".lora_", 1)[0] for n, _ in model.named_parameters() if ".lora_" in n})
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    device, dist = torch.device("cpu"), single()
    optimizer = make_optimizer(model, recipe)  # AdamW, head group at train.head_lr or train.lr
    train = dataset.split["train"]
    steps_per_epoch = math.ceil(len(train) / tr.batch_size)
    scheduler = make_scheduler(optimizer, recipe, steps_per_epoch)

    def snapshot() -> dict:
        return {k: v.detach().clone() for k, v in model.state_dict().items() if k in trainable}

    state = {"epoch": 0, "best_metric": None, "best_epoch": -1, "bad_epochs": 0, "train_seconds": 0.0, "graphs_seen": 0, "history": [], "finished": False}
    best = snapshot()
    checkpoint = folder / "checkpoint.pt"
    if checkpoint.exists():  # resume at the end of the last finished epoch (no dropout: no RNG state to restore)
        saved = torch.load(checkpoint, weights_only=True)
        model.load_state_dict(saved["trainable"], strict=False)
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        state, best = json.loads(saved["state"]), saved["best"]
    while state["epoch"] < tr.epochs and not state["finished"]:
        order = dist.epoch_order(train, recipe.seed, state["epoch"])  # the trainer's seeded order
        if len(order) % tr.batch_size == 1 and len(order) > 1:
            order = order[:-1]  # a one-graph batch breaks BatchNorm in training mode (as the trainer does)
        loader = DataLoader(StoreBatches(dataset.store, dataset.y, order, tr.batch_size), batch_size=None, shuffle=False, collate_fn=as_is)
        peft_model.train()  # CftModel.train keeps the frozen backbone in eval mode
        if variant == "bn-batch":
            for norm in norms:
                norm.train()  # batch statistics; dropout stays off (the backbone module keeps eval mode)
        started, losses = time.perf_counter(), []
        for batch in loader:
            loss = model.task_loss(model(batch), batch.y)  # cft's loss: masked BCE (binary tasks), masked MSE on standardised targets (regression)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            missed = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None and not n.startswith("head.")]
            if state["graphs_seen"] == 0 and missed:
                # the backbone read a wrapped Linear's bare weight (as cft/ did from 82a98fe until b7d2bee):
                # the run would train without those weights and be reported as LoRA's
                raise RuntimeError(f"{len(missed)} trainable weights received no gradient (first: {missed[0]}): the model's forward does not use them")
            if tr.grad_clip:
                torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], tr.grad_clip)
            optimizer.step()
            scheduler.step()
            losses.append(float(loss))
            state["graphs_seen"] += int(batch.num_graphs)
        state["train_seconds"] += time.perf_counter() - started
        valid = evaluate_split(model, dataset, "valid", metric, recipe.eval.batch_size, device, dist)
        if better(metric, valid["mean"], state["best_metric"]):
            state["best_metric"], state["best_epoch"], state["bad_epochs"] = valid["mean"], state["epoch"], 0
            best = snapshot()
        else:
            state["bad_epochs"] += 1
        state["history"].append({"epoch": state["epoch"] + 1, "loss": statistics.mean(losses), f"valid_{metric}": valid["mean"], "seconds": state["train_seconds"]})
        state["epoch"] += 1
        if tr.patience and state["bad_epochs"] >= tr.patience:
            state["finished"] = True
        saved = {"trainable": snapshot(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "state": json.dumps(state), "best": best}
        atomic_write_with(checkpoint, lambda tmp, saved=saved: torch.save(saved, tmp))
    model.load_state_dict(best, strict=False)
    valid = evaluate_split(model, dataset, "valid", metric, recipe.eval.batch_size, device, dist)
    test = evaluate_split(model, dataset, "test", metric, recipe.eval.batch_size, device, dist)
    lora = sum(p.numel() for n, p in model.named_parameters() if ".lora_" in n)
    head = sum(p.numel() for p in model.head.parameters())
    counted = sum(p.numel() for p in model.parameters())
    summary = {
        "metric": metric, "best_epoch": state["best_epoch"] + 1, "epochs_run": state["epoch"],
        "valid": {"mean": valid["mean"], "per_task": valid["per_task"]}, "test": {"mean": test["mean"], "per_task": test["per_task"]},
        "params": {"trainable": sum(p.numel() for p in model.parameters() if p.requires_grad), "total": counted,
                   "backbone": counted - lora - head, "lora": lora, "head": head},
        "seconds": {"train": state["train_seconds"]},
        "graphs_per_second": state["graphs_seen"] / state["train_seconds"] if state["train_seconds"] else None,
        "history": state["history"], "lora": {"rank": payload["rank"], "alpha": config.lora_alpha, "layers": lora_layers, "variant": variant,
                                              "norms_trained": sum(p.numel() for m in norms for p in m.parameters() if p.requires_grad)},
        "versions": {"peft": peft.__version__, "torch": torch.__version__},
    }
    atomic_write_json(folder / "summary.json", summary)


def chemprop_score(ds: Dataset, rows, predictions):
    """cft.metrics.score of chemprop's predictions (DataFrames): classification probabilities as
    logits (ROC-AUC reads their order only), regression predictions as they are (label units:
    chemprop un-scales its own standardised outputs)."""
    import numpy as np

    from cft.metrics import score

    tasks = list(ds.tasks)
    truth, pred = rows[tasks].to_numpy(dtype=np.float32), predictions[tasks].to_numpy(dtype=np.float64)
    if ds.task_type == "classification":
        p = np.clip(pred, 1e-7, 1 - 1e-7)
        pred = np.log(p) - np.log1p(-p)
    return score(ds.metric, truth, pred, tasks)


def run_chemprop(method: str, seed: int, ctx: dict) -> None:
    """`chemprop train` with its defaults on the split files (epochs as every method), then
    `chemprop predict` on the valid rows with its best model; both scored by cft.metrics."""
    import pandas as pd

    from cft.files.atomic import atomic_write_json

    ds = ctx["ds"]
    folder = run_folder(ctx["out"], ctx["tag"], method, seed)
    out = folder / "chemprop"
    folder.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"OMP_NUM_THREADS": str(ctx["threads"]), "MKL_NUM_THREADS": str(ctx["threads"])}
    tool = str(PEERS_PYTHON.parent / "chemprop")
    cmd = [tool, "train", "--data-path", str(ctx["csv"]), "--task-type", ds.task_type, "--smiles-columns", "smiles", "--target-columns", *ds.tasks,
           "--splits-file", str(ctx["splits"]), "--epochs", str(ctx["epochs"]), "--metrics", ds.chemprop_metric, "--output-dir", str(out), "--num-workers", "0",
           "--accelerator", "cpu", "--devices", "1", "--pytorch-seed", str(seed), "--data-seed", str(seed)]
    if ctx["epochs"] <= CHEMPROP_WARMUP:  # chemprop refuses fewer epochs than its warm-up (a --quick check only)
        cmd += ["--warmup-epochs", str(ctx["epochs"] - 1)]
    started = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False, cwd=folder)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"chemprop train failed:\n{done.stderr[-3000:]}")
    frame = pd.read_csv(ctx["csv"])
    best_model = next(out.rglob("best.pt"))
    valid_rows = frame[frame["split"] == "valid"].reset_index(drop=True)
    valid_csv = folder / "valid.csv"
    valid_rows[["smiles"]].to_csv(valid_csv, index=False)
    predict = [tool, "predict", "--test-path", str(valid_csv), "--model-paths", str(best_model), "--preds-path", str(folder / "valid_predictions.csv"),
               "--smiles-columns", "smiles", "--num-workers", "0", "--accelerator", "cpu", "--devices", "1"]
    done = subprocess.run(predict, capture_output=True, text=True, env=env, check=False, cwd=folder)
    if done.returncode != 0:
        raise RuntimeError(f"chemprop predict failed:\n{done.stderr[-3000:]}")

    def scored(rows: pd.DataFrame, predictions: Path) -> dict:
        pred = pd.read_csv(predictions)
        if list(pred["smiles"]) != list(rows["smiles"]):
            raise RuntimeError(f"{predictions}: rows are not the split's rows in order")
        return chemprop_score(ds, rows, pred)

    test = scored(frame[frame["split"] == "test"].reset_index(drop=True), next(out.rglob("test_predictions.csv")))
    valid = scored(valid_rows, folder / "valid_predictions.csv")
    probe = ("import sys, chemprop; from chemprop.models import MPNN; m = MPNN.load_from_file(sys.argv[1]); "
             "print(chemprop.__version__, sum(p.numel() for p in m.parameters()), sum(p.numel() for p in m.predictor.parameters()))")
    version, total, head = subprocess.run([str(PEERS_PYTHON), "-c", probe, str(best_model)], capture_output=True, text=True, env=env, check=True).stdout.split()
    best_ckpt = next((p.name for p in out.rglob("best-epoch=*.ckpt")), "")
    best_epoch = int(best_ckpt.split("best-epoch=")[1].split("-")[0]) + 1 if best_ckpt else None
    epochs_run = _chemprop_epochs(out)
    summary = {"metric": ds.metric, "best_epoch": best_epoch, "epochs_run": epochs_run if epochs_run is not None else ctx["epochs"],
               "valid": {"mean": valid["mean"], "per_task": valid["per_task"]}, "test": {"mean": test["mean"], "per_task": test["per_task"]},
               "params": {"trainable": int(total), "total": int(total), "head": int(head)},
               "seconds": {"train": wall, "note": "wall clock of `chemprop train` (featurisation, training, validation and the test pass)"},
               "graphs_per_second": None, "versions": {"chemprop": version}}
    atomic_write_json(folder / "summary.json", summary)


def _chemprop_epochs(out: Path) -> int | None:
    """Epochs chemprop ran, from its Lightning CSV log when it wrote one."""
    import pandas as pd

    for log in out.rglob("metrics.csv"):
        frame = pd.read_csv(log)
        if "epoch" in frame:
            return int(frame["epoch"].max()) + 1
    return None


def read_row(method: str, seed: int, folder: Path, hidden: int, num_tasks: int) -> dict | None:
    """One result row from a run's summary.json; a cft run's head is its linear layer, (hidden + 1) x
    the tasks it trained (its summary's: cft drops a task with no label in the rows it reads)."""
    path = folder / "summary.json"
    if not path.exists():
        return None
    s = json.loads(path.read_text())
    p = s["params"]
    head = p.get("head", (hidden + 1) * len(s.get("tasks") or range(num_tasks)) if method != "chemprop" else None)
    name = PEERS[method][0]
    if method in LORA_VARIANTS:  # the rank the run was trained with (runs of every --lora-rank share the result file)
        name = lora_name(method, s["lora"]["rank"])
    entropy = _best_epoch_entropy(folder / "metrics.jsonl", s["best_epoch"])
    use = _last_layer_use(folder / "routing_history.safetensors", s["best_epoch"])
    code = (folder / CODE_FILE).read_text().strip() if (folder / CODE_FILE).exists() else None  # None: trained before runs kept it
    return {"method": name, "id": method, "seed": seed, "metric": s["metric"], "valid": s["valid"]["mean"], "test": s["test"]["mean"],
            "best_epoch": s["best_epoch"], "epochs": s["epochs_run"], "trainable": p["trainable"], "total": p["total"],
            "trainable_outside_heads": p["trainable"] - head if head is not None else None, "train_seconds": s["seconds"]["train"],
            **({"versions": s["versions"]} if "versions" in s else {}), **({"routing_entropy": entropy} if entropy else {}),
            **({"last_layer_use": use} if use else {}), **({"code_commit": code} if code else {})}


def _best_epoch_entropy(metrics: Path, best_epoch: int | None) -> dict[str, float] | None:
    """A routed cft run's mean routing entropy per insertion layer (nats) at its best epoch, from its
    metrics.jsonl (what its bundle holds); None for runs without routes."""
    if not metrics.exists() or best_epoch is None:
        return None
    for line in metrics.read_text().splitlines():
        epoch = json.loads(line)
        if epoch.get("epoch") == best_epoch and epoch.get("routing"):
            return {layer: v["entropy"] for layer, v in epoch["routing"].items()}
    return None


def _last_layer_use(history: Path, best_epoch: int | None) -> dict | None:
    """How the tasks use the last insertion layer's adapters at the best epoch (the expert gates
    under the task read-out), from the run's routing_history.safetensors: `chosen`, how many
    adapters are some task's largest route; `balance`, the entropy of the mean route over ln K
    (1: all adapters carry the same share, 0: every task on one). None for runs without routes."""
    if not history.exists() or best_epoch is None:
        return None
    from safetensors.numpy import load_file

    from cft.views.routing import chosen_count, task_entropy

    routes = load_file(str(history))
    layers = sorted(int(k.split("/layer")[1]) for k in routes if k.startswith(f"epoch{best_epoch:04d}/"))
    if not layers:
        return None
    r = routes[f"epoch{best_epoch:04d}/layer{layers[-1]}"]
    if r.shape[1] < 2:
        return None
    balance = max(0.0, float(task_entropy(r.mean(axis=0, keepdims=True))[0] / math.log(r.shape[1])))  # no -0.0
    return {"chosen": chosen_count(r), "of": int(r.shape[1]), "balance": balance}


def summarise(rows: list[dict]) -> dict:
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(r["method"], []).append(r)
    out = {}
    for method, rs in groups.items():
        tests = [r["test"] for r in rs]
        out[method] = {"seeds": len(rs), "test_mean": statistics.mean(tests), "test_std": statistics.pstdev(tests),
                       "test_sample_std": statistics.stdev(tests) if len(tests) > 1 else None, "valid_mean": statistics.mean(r["valid"] for r in rs),
                       "best_epochs": [r["best_epoch"] for r in rs], "trainable": rs[0]["trainable"], "trainable_outside_heads": rs[0]["trainable_outside_heads"],
                       "total": rs[0]["total"], "train_seconds_mean": statistics.mean(r["train_seconds"] for r in rs)}
    return out


# ----------------------------------------------------------------- orchestration


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=sorted(DATASETS), default="tox21", help="tox21 (classification, ROC-AUC; default), toxcast (617 tasks, ROC-AUC) or esol (regression, RMSE)")
    parser.add_argument("--quick", action="store_true", help=f"a check: --limit {QUICK_LIMIT}, {QUICK_EPOCHS} epochs, 1 seed (peers_quick.json)")
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--out", type=Path, help="run folders (default: benchmarks/results/peers, peers_quick with --quick/--limit)")
    parser.add_argument("--json", type=Path, help="result file (default: benchmarks/results/peers.json, peers_quick.json with --quick/--limit; "
                        "peers_esol.json, peers_esol_quick.json for --dataset esol)")
    parser.add_argument("--backbone", type=Path, default=DEFAULT_BACKBONE, help="the backbone file every pretrained method shares")
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 per method (default 3)")
    parser.add_argument("--epochs", type=int, help="epochs of every method (default: the recipe's)")
    parser.add_argument("--methods", default=",".join(PEERS), help=f"comma-separated subset of {','.join(PEERS)} (default: all)")
    parser.add_argument("--split-seed", type=int, help="train on cft's balanced scaffold split of this seed (data.split.method=scaffold_balanced; "
                        "files in split-balanced<N>/, run folders in <dataset>-balanced<N>/, result file *_balanced<N>.json) instead of the recipe's scaffold split")
    parser.add_argument("--limit", type=int, help="about N rows of the split file only, each split in its share (a check, not a benchmark)")
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time (each gets cores // jobs threads)")
    parser.add_argument("--threads", type=int, help="torch threads per run (default: cores // jobs); 1 when another benchmark shares the cores")
    parser.add_argument("--lora-rank", type=int, default=LORA_RANK, help=f"LoRA rank (default {LORA_RANK}; 12 matches the trainable weights of cft's adapters)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--payload", default="{}", help=argparse.SUPPRESS)
    args = parser.parse_args()
    data = args.data.resolve()
    if args.child == "lora":
        child_lora(json.loads(args.payload), data)
        return
    wanted = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in wanted if m not in PEERS]
    if unknown or not wanted:
        parser.error(f"--methods: {', '.join(unknown) or 'none given'}; choose from {', '.join(PEERS)}")
    if args.quick:
        args.limit, args.seeds, args.epochs = args.limit or QUICK_LIMIT, 1, args.epochs or QUICK_EPOCHS
    if (({"chemprop"} | set(LORA_VARIANTS)) & set(wanted)) and not PEERS_PYTHON.exists():
        parser.error(f"{PEERS_PYTHON} is missing: create it as the module docstring says, or leave chemprop and lora out of --methods")
    if args.lora_rank < 1:
        parser.error(f"--lora-rank must be at least 1, got {args.lora_rank}")
    for method in LORA_VARIANTS:
        PEERS[method], FOLDERS[method] = (lora_name(method, args.lora_rank), None), lora_folder(method, args.lora_rank)
    backbone = args.backbone.resolve()
    if not backbone.is_file():
        parser.error(f"--backbone {backbone} does not exist")

    from cft.files.atomic import atomic_write_json
    from cft.files.backbone import read_backbone_header
    from cft.files.paths import sha256_file
    from cft.recipe.load import load_recipe

    ds = resolved(DATASETS[args.dataset], data)
    recipe = load_recipe(REPO / ds.recipe)
    check_dataset(args.dataset, ds, recipe)
    PEERS["adapters"] = (f"cft adapters ({ds.recipe})", PEERS["adapters"][1])
    epochs, patience = args.epochs or recipe.train.epochs, recipe.train.patience
    small = args.limit is not None
    # run folders of every dataset share one root (the tag and the split file names carry the dataset); result files do not
    out = (args.out or REPO / "benchmarks" / "results" / ("peers_quick" if small else "peers")).resolve()
    stem = ("peers" if args.dataset == "tox21" else f"peers_{args.dataset}") + split_suffix(args.split_seed).replace("-", "_")
    target = args.json or REPO / "benchmarks" / "results" / (f"{stem}_quick.json" if small else f"{stem}.json")
    # the plain `<dataset>` folder holds runs of FOLDER_EPOCHS epochs whatever the recipe says now:
    # a recipe's epochs may change, the finished runs' may not
    tag = args.dataset + split_suffix(args.split_seed) + (f"-limit{args.limit}" if small else "") + (f"-epochs{epochs}" if epochs != FOLDER_EPOCHS else "")
    csv, splits = split_files(data, out / split_folder_name(args.limit, args.split_seed), args.limit, args.dataset, args.split_seed)
    threads = args.threads or max(1, (os.cpu_count() or 1) // args.jobs)
    ctx = {"dataset": args.dataset, "ds": ds, "recipe": ds.recipe, "tag": tag, "epochs": epochs, "patience": patience, "out": out, "data": data, "threads": threads,
           "backbone": backbone, "lora_rank": args.lora_rank, "csv": csv, "splits": splits, "shared": shared_overrides(backbone, split_overrides(csv, splits))}
    runners = {"chemprop": run_chemprop, **{m: run_lora for m in LORA_VARIANTS}}
    jobs = [(m, seed) for seed in range(args.seeds) for m in wanted]  # seed by seed: a stopped run leaves every method with the same seeds
    frame_splits = json.loads(splits.read_text())[0]
    command = " ".join(["python", "benchmarks/peers.py"] + ([f"--dataset {args.dataset}"] if args.dataset != "tox21" else []) + (["--quick"] if args.quick else []) + ([f"--limit {args.limit}"] if small and not args.quick else [])
                       + ([f"--split-seed {args.split_seed}"] if args.split_seed is not None else [])
                       + ([f"--seeds {args.seeds}"] if args.seeds != 3 and not args.quick else []) + ([f"--epochs {args.epochs}"] if args.epochs and not args.quick else [])
                       + ([f"--methods {args.methods}"] if wanted != list(PEERS) else []) + ([f"--backbone {args.backbone}"] if backbone != DEFAULT_BACKBONE else []) + ([f"--lora-rank {args.lora_rank}"] if args.lora_rank != LORA_RANK else [])
                       + [f"--jobs {args.jobs}"] + ([f"--threads {args.threads}"] if args.threads else []))
    started, errors = time.perf_counter(), []

    def write(partial: bool) -> dict:
        """Every finished run in the run folders (any seed up to --seeds, any method), rewritten atomically."""
        folders = [(m, run_folder(out, tag, m, seed), seed) for m in PEERS if m not in LORA_VARIANTS for seed in range(args.seeds)]
        # every LoRA method at every rank run here: folder lora (rank 8) or <method>-r<rank>
        folders += [(lora_method(f.name), f / f"seed{seed}", seed) for f in sorted((out / tag).glob("lora*")) if lora_method(f.name) for seed in range(args.seeds)]
        rows = [r for m, folder, seed in folders if (r := read_row(m, seed, folder, recipe.backbone.hidden, len(ds.tasks)))]
        result = {
            "machine": machine(), "commit": _commit(), "code_commit": _code_commit(), "command": command, "quick": args.quick, "partial": partial,
            "dataset": args.dataset, "recipe": ds.recipe, "metric": ds.metric, "tasks": list(ds.tasks), "epochs": epochs, "patience": patience, "seeds": args.seeds, "limit": args.limit,
            "threads_per_run": threads, "jobs": args.jobs,
            "split": {"csv": str(csv.relative_to(REPO)) if csv.is_relative_to(REPO) else str(csv), "csv_sha256": sha256_file(csv),
                      "splits_json": str(splits.relative_to(REPO)) if splits.is_relative_to(REPO) else str(splits), "splits_json_sha256": sha256_file(splits),
                      "sizes": {k: len(v) for k, v in frame_splits.items()},
                      "made_by": (f"cft's scaffold split of {ds.csv} ({ds.recipe})" if args.split_seed is None
                                  else f"cft's balanced scaffold split of {ds.csv} ({ds.recipe} with data.split.method=scaffold_balanced, data.split.seed={args.split_seed})")
                      + " by speed.write_split_files" + (f", first {args.limit} rows" if small else ""),
                      "split_seed": args.split_seed},
            "backbone": {"path": str(backbone.relative_to(REPO)) if backbone.is_relative_to(REPO) else str(backbone),
                         "fingerprint": read_backbone_header(backbone).get("fingerprint")},
            "lora": {"rank": args.lora_rank, "targets": LORA_TARGETS, "alpha": "peft's default (8)", "dropout": 0.0},
            "rows": rows, "summary": summarise(rows), "errors": errors, "seconds_this_invocation": time.perf_counter() - started,
        }
        atomic_write_json(target, result)
        return result

    code = _code_commit()  # the result file's header names the collecting invocation's; each run keeps its own

    def one(method: str, seed: int) -> tuple[str, int, float]:
        t0 = time.perf_counter()
        folder = run_folder(out, tag, method, seed)
        if not (folder / "summary.json").exists():
            runners.get(method, run_cft)(method, seed, ctx)
            if method != "chemprop":  # chemprop runs no cft code
                (folder / CODE_FILE).write_text(code + "\n")
        return method, seed, time.perf_counter() - t0

    print(f"{args.dataset} ({len(ds.tasks)} task{'s' if len(ds.tasks) > 1 else ''}, {ds.metric}); split: {csv} ({', '.join(f'{k} {len(v)}' for k, v in frame_splits.items())}); "
          f"{len(jobs)} runs, {epochs} epochs, patience {patience}, "
          f"{args.jobs} at a time x {threads} thread(s)", flush=True)
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = {pool.submit(one, m, s): (m, s) for m, s in jobs}
        for future in as_completed(futures):
            m, s = futures[future]
            try:
                _, _, seconds = future.result()
                print(f"done {PEERS[m][0]} seed {s} ({seconds:.0f} s)", flush=True)
            except (RuntimeError, OSError, StopIteration, ValueError, KeyError, subprocess.CalledProcessError) as exc:  # one failed run does not stop the others; it is listed in the result file
                errors.append({"method": PEERS[m][0], "seed": s, "error": str(exc)[-2000:]})
                print(f"FAILED {PEERS[m][0]} seed {s}: {str(exc)[-600:]}", flush=True)
            write(partial=True)
    result = write(partial=False)
    for method, s in result["summary"].items():
        outside = s["trainable_outside_heads"]
        print(f"{method:36s} test {ds.metric} {s['test_mean']:.4f} ± {s['test_std']:.4f}  valid {s['valid_mean']:.4f}  trainable {s['trainable']:,}"
              f"{f' ({outside:,} outside heads)' if outside is not None else ''} of {s['total']:,}  best epochs {s['best_epochs']}  {s['train_seconds_mean']:.0f} s")
    print(f"total {result['seconds_this_invocation']:.0f} s; wrote {target}")
    if errors:
        sys.exit(1)


if __name__ == "__main__":
    main()
