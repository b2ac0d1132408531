"""The quality benchmark's runs must be the methods they are named after.

An earlier ordering of the `--set` overrides let the shared `backbone.path` win over the
"GIN-VN from scratch" method's `backbone.path=null`, so every scratch run was a second full
fine-tuning run, and BENCHMARKS.md compared a method with itself. These tests read each method's
effective recipe the way `cft train` does, without training anything.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cft.recipe.load import load_recipe

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import quality  # noqa: E402

BACKBONE = Path("/nonexistent/backbone.safetensors")  # only named in the recipe, never read here


def effective_recipes(dataset: str, extra: list[str]) -> dict:
    recipe_path, epochs, _ = quality.FULL[dataset]
    shared = quality.shared_overrides(BACKBONE, extra) + quality.routed_overrides(dataset)
    return {method: load_recipe(REPO / recipe_path, quality.method_overrides(method, shared, 0, epochs, 1)) for method in quality.METHODS}


@pytest.mark.parametrize("dataset", sorted(quality.FULL))
def test_every_method_trains_what_its_name_says(dataset):
    recipes = effective_recipes(dataset, [])
    scratch = recipes["GIN-VN from scratch"]
    assert scratch.backbone.path is None and scratch.backbone.pretrain is None and scratch.backbone.pretrained is None, "from scratch must start from a random backbone"
    assert not scratch.backbone.freeze and not scratch.adapters.enabled
    for method, recipe in recipes.items():
        if method != "GIN-VN from scratch":
            assert recipe.backbone.path == str(BACKBONE) and recipe.backbone.pretrain is None and recipe.backbone.pretrained is None, method
    assert not recipes["full fine-tuning"].backbone.freeze and not recipes["full fine-tuning"].adapters.enabled
    assert recipes["head only"].backbone.freeze and not recipes["head only"].adapters.enabled
    assert recipes["one adapter (K=1, no routing)"].adapters.num_adapters == 1
    assert recipes["uniform mixture (no gate)"].routing.mode == "uniform"
    assert recipes["routing, identity prior"].prior.source == "identity"
    assert recipes["full method (label prior)"].prior.source == "labels"
    dumped = {method: recipe.model_dump_json() for method, recipe in recipes.items()}
    assert len(set(dumped.values())) == len(dumped), "two methods run the same recipe"


def test_quick_runs_keep_the_quick_backbone_architecture():
    """--quick pretrains a small backbone; every run must describe that architecture, or `cft train`
    refuses the file (and from scratch would silently train a different size)."""
    quick_extra = ["backbone.hidden=64", "backbone.num_layers=3", "backbone.pretrain.epochs=1", "backbone.pretrain.data.limit=4000", "data.limit=1500"]
    for method, recipe in effective_recipes("tox21", quick_extra).items():
        assert (recipe.backbone.hidden, recipe.backbone.num_layers, recipe.data.limit) == (64, 3, 1500), method


def test_peers_benchmark_trains_every_cft_method_on_the_one_split_file(tmp_path, data_root):
    """benchmarks/peers.py end to end for its cft methods (chemprop and LoRA need the benchmark's own
    environment, which CI does not build): one result row per method, and every run's own
    splits.json is the split file the benchmark wrote."""
    import json

    out, result = _peers(tmp_path, data_root, "--methods", "adapters,adapters-top,adapters-mlp,head", "--limit", "300")
    assert sorted(r["method"] for r in result["rows"]) == [
        "cft adapters (recipes/tox21.yaml)", "cft adapters beside the GIN MLP", "cft adapters, layers 3-4 (prefix cached)", "head only"], result["rows"]
    top = yaml.safe_load(next(out.glob("tox21*/adapters-top/seed0/recipe.yaml")).read_text())
    assert top["adapters"]["layers"] == [3, 4] and top["train"]["prefix_cache"] == "memory", top["adapters"]
    assert yaml.safe_load(next(out.glob("tox21*/adapters-mlp/seed0/recipe.yaml")).read_text())["adapters"]["placement"] == "mlp"
    assert all(0.0 <= r["test"] <= 1.0 and r["epochs"] == 1 for r in result["rows"])
    written = json.loads((out / "split-limit300" / "tox21_splits.json").read_text())  # not split/: the full split the subset is cut from
    for run in out.glob("tox21*/*/seed0"):
        assert json.loads((run / "splits.json").read_text()) == written, f"{run} trained on another split"
    assert len(list(out.glob("tox21*/*/seed0"))) == 4
    assert {r["code_commit"] for r in result["rows"]} == {quality._code_commit()}, "each run keeps the code that trained it"


def test_peers_benchmark_trains_on_a_balanced_scaffold_split_of_its_seed(tmp_path, data_root):
    """`--split-seed N`: the split file is cft's `scaffold_balanced` split of seed N (not the recipe's
    scaffold split), kept apart from it (split-balanced<N>/, run folders <dataset>-balanced<N>/), and
    every run trains on it."""
    import json

    import pandas as pd

    from cft.data.split import balanced_scaffold_split, scaffold_split

    out, result = _peers(tmp_path, data_root, "--methods", "head", "--limit", "300", "--split-seed", "1")
    assert result["split"]["split_seed"] == 1 and "balanced scaffold split" in result["split"]["made_by"] and "--split-seed 1" in result["command"]
    full = pd.read_csv(out / "split-balanced1" / "tox21_split.csv")
    fractions = (0.8, 0.1, 0.1)
    written = {k: full.index[full["split"] == k].tolist() for k in ("train", "valid", "test")}
    assert written == {k: v.tolist() for k, v in balanced_scaffold_split(full["smiles"].tolist(), fractions, 1).items()}
    assert written["test"] != scaffold_split(full["smiles"].tolist(), fractions)["test"].tolist()
    subset = json.loads((out / "split-balanced1-limit300" / "tox21_splits.json").read_text())
    runs = list(out.glob("tox21-balanced1-limit300*/*/seed0"))
    assert len(runs) == 1 and json.loads((runs[0] / "splits.json").read_text()) == subset
    assert not (out / "split").exists()


@pytest.mark.parametrize("dataset", ["tox21", "toxcast"])
def test_every_cft_peer_method_is_a_valid_recipe_that_changes_what_its_name_says(dataset):
    """Each cft method of benchmarks/peers.py loads as its dataset's recipe plus its overrides (what
    `cft train` would validate), and the lever methods change only their one field."""
    import peers

    recipe_path = peers.DATASETS[dataset].recipe
    base = load_recipe(REPO / recipe_path)
    loaded = {m: load_recipe(REPO / recipe_path, peers.method_sets(m, dataset)) for m, (_, sets) in peers.PEERS.items() if sets is not None}
    assert loaded["adapters"] == base
    # every other method starts from the recipe as it was before the Tox21 recipe took LoRA's scale,
    # the weight average, the embeddings' bank and the virtual node's banks at rank 10, so its rows
    # keep meaning what they measured
    base = load_recipe(REPO / recipe_path, peers.before_recipe_changes(dataset))
    if dataset == "tox21":  # the recipe's adapters are what that method measured (at lr 0.003 and bf16 products there)
        measured = loaded["adapters-vn-emb-r10"]
        assert measured.adapters == loaded["adapters"].adapters and measured.train.ema == loaded["adapters"].train.ema == 0.995
        assert loaded["recipe-vn-r10"] == loaded["adapters"], "the recipe is what the recipe-vn-r10 rows measured"
        assert loaded["adapters"].adapters.embeddings and not loaded["adapters-frozen-bf16-s067-ema995"].adapters.embeddings
        assert loaded["adapters"].adapters.virtual_node and loaded["adapters"].adapters.rank == 10
        assert not loaded["adapters-emb"].adapters.virtual_node and loaded["adapters-emb"].adapters.rank == 12
        assert base.adapters.scale == 1 and base.train.ema is None and not base.adapters.embeddings
        assert base.adapters.rank == 12 and not base.adapters.virtual_node
        assert loaded["adapters"].train.lr == 0.005 and base.train.lr == 0.003 and loaded["head"].train.lr == 0.003
        # `auto` as it was when those methods ran: both products bf16 with AMX tiles, fp32 elsewhere
        from cft.training.inference import cpu_has_amx

        assert loaded["adapters"].train.frozen_bf16 == "backward" and base.train.frozen_bf16 is cpu_has_amx()
        assert loaded["recipe-frozen-bf16-backward"] == loaded["adapters"], "the recipe is what the recipe-frozen-bf16-backward rows measured"
        assert loaded["recipe-input-grads-bf16"] == loaded["adapters"], "recipes/tox21.yaml sets frozen_bf16: backward itself"
        assert loaded["recipe-frozen-fp32"].train.frozen_bf16 is False
        # the default-* methods train recipes/default.yaml's model and schedule on the dataset
        default = load_recipe(REPO / "recipes" / "default.yaml")
        for method, setting in (("default-input-grads-bf16", "backward"), ("default-frozen-fp32", False)):
            r = loaded[method]
            assert (r.backbone, r.adapters, r.prior, r.routing) == (default.backbone, default.adapters, default.prior, default.routing)
            assert r.train.frozen_bf16 == setting and r.train.model_copy(update={"frozen_bf16": default.train.frozen_bf16}) == default.train
    # LoRA trains with the head-only recipe's optimiser: at the lr its rows were measured at, whatever the recipe says now
    lora = load_recipe(REPO / recipe_path, peers.lora_overrides({"shared": [], "patience": 10, "epochs": 30, "threads": 1}, 0))
    assert lora.train.lr == 0.003 and not lora.adapters.enabled
    at_recipes_lr = load_recipe(REPO / recipe_path, peers.lora_overrides({"shared": [], "patience": 10, "epochs": 30, "threads": 1}, 0, "lora-vn-emb-lr005"))
    assert at_recipes_lr.train.lr == 0.005 and peers.lora_method(peers.lora_folder("lora-vn-emb-lr005", 12)) == "lora-vn-emb-lr005"
    # the former recipe's adapters (the methods' common start) differ from today's recipe in adapters only
    former = loaded["adapters-former"]
    assert (former.adapters.num_adapters, former.adapters.rank, former.adapters.placement, former.adapters.activation) == (
        peers.ROUTED_K[dataset], 8, "output", "gelu")
    assert former.prior == base.prior and former.train == base.train and former.backbone == base.backbone
    assert loaded["adapters-k4"].adapters.num_adapters == 4 and loaded["adapters-k4"].prior == base.prior and loaded["adapters-k4"].train == base.train
    assert loaded["adapters-hidden"].adapters.placement == "mlp-hidden" and loaded["adapters-hidden"].adapters.num_adapters == former.adapters.num_adapters
    recipes_method = {"tox21": "both-k1-r12-linear", "toxcast": "adapters-both-linear"}[dataset]
    assert loaded[recipes_method].adapters == base.adapters, f"the recipe's adapters are the {recipes_method} method's"
    assert loaded["adapters-out"].adapters.placement == "mlp-out"
    assert loaded["adapters-b64"].train.batch_size == 64 and loaded["adapters-b64"].train.lr == base.train.lr
    assert loaded["adapters-l14"].adapters.layers == [1, 2, 3, 4] and loaded["adapters-l14"].train.prefix_cache == "memory"
    assert loaded["adapters-plain-routes"].prior.norm == "none" and loaded["adapters-plain-routes"].train.route_entropy == 0


def _peers(tmp_path: Path, data_root: Path, *args: str) -> tuple[Path, dict]:
    """benchmarks/peers.py with `args`, one epoch, one seed, one run at a time: its run folder and result."""
    import json
    import subprocess

    out, target = tmp_path / "runs", tmp_path / "peers.json"
    command = [sys.executable, "benchmarks/peers.py", *args, "--epochs", "1", "--seeds", "1", "--jobs", "1", "--threads", "1",
               "--data", str(data_root), "--out", str(out), "--json", str(target)]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    return out, json.loads(target.read_text())


def test_peers_benchmark_runs_esol_regression_on_its_split_file(tmp_path, data_root):
    """`--dataset esol`: the cft methods train the one regression task of delaney-processed.csv on the
    ESOL split file (its own names), scored by RMSE in label units; every run's splits.json is it."""
    import json
    import math

    if not (data_root / "delaney-processed.csv").exists():
        pytest.skip(f"delaney-processed.csv is not in {data_root}")
    out, result = _peers(tmp_path, data_root, "--dataset", "esol", "--methods", "adapters,head", "--limit", "200")
    assert result["dataset"] == "esol" and result["recipe"] == "recipes/esol.yaml" and result["tasks"] == ["measured log solubility in mols per litre"]
    assert sorted(r["method"] for r in result["rows"]) == ["cft adapters (recipes/esol.yaml)", "head only"], result["rows"]
    for r in result["rows"]:
        assert r["metric"] == "rmse" and math.isfinite(r["test"]) and r["test"] > 0 and r["epochs"] == 1, r
    head_only = next(r for r in result["rows"] if r["id"] == "head")
    assert head_only["trainable"] == 301 and head_only["trainable_outside_heads"] == 0, head_only  # (300 + 1) x 1 task
    subset = out / "split-limit200"  # the files the runs read; split/ holds the full split the subset is cut from
    assert "split" in (subset / "esol_split.csv").read_text().splitlines()[0].split(",")
    written = json.loads((subset / "esol_splits.json").read_text())
    assert [len(written[0][k]) for k in ("train", "val", "test")] == [160, 20, 20]
    runs = list(out.glob("esol*/*/seed0"))
    assert len(runs) == 2
    for run in runs:
        assert json.loads((run / "splits.json").read_text()) == written, f"{run} trained on another split"


def test_peers_benchmark_reads_toxcast_task_columns_from_its_csv(tmp_path, data_root):
    """`--dataset toxcast`: the task list is every column of toxcast.csv.gz but the SMILES (617), the
    same for cft (recipes/toxcast.yaml) and the result file; the head-only row counts one head per task trained."""
    import gzip
    import json

    if not (data_root / "toxcast.csv.gz").exists():
        pytest.skip(f"toxcast.csv.gz is not in {data_root}")
    with gzip.open(data_root / "toxcast.csv.gz", "rt") as fh:
        header = fh.readline().strip().split(",")
    out, result = _peers(tmp_path, data_root, "--dataset", "toxcast", "--methods", "head", "--limit", "300")
    assert result["tasks"] == [c for c in header if c != "smiles"] and len(result["tasks"]) == 617
    (row,) = result["rows"]
    run = next(out.glob("toxcast*/head/seed0"))
    trained = json.loads((run / "summary.json").read_text())["tasks"]  # 300 rows leave some tasks without a label: cft drops them
    dropped = json.loads((run / "dropped_tasks.json").read_text())["tasks"] if (run / "dropped_tasks.json").exists() else []
    assert sorted(trained + dropped) == sorted(result["tasks"])
    assert row["trainable"] == 301 * len(trained) and row["trainable_outside_heads"] == 0 and row["metric"] == "rocauc", row


def _peers_result(rows: list[dict]) -> dict:
    """A minimal peers result file around `rows`, for report.py's table."""
    machine = {"cpu": "cpu", "cores": 2, "torch": "2", "torch_threads": 1, "python": "3", "commit": "x", "date": "today"}
    return {"machine": machine, "command": "peers.py", "code_commit": "x", "split": {"csv": "s.csv", "csv_sha256": "0" * 64, "sizes": {"train": 1, "val": 1, "test": 1}},
            "epochs": 1, "patience": None, "backbone": {"fingerprint": "f" * 64}, "rows": rows}


def test_report_lists_regression_peers_lowest_error_first():
    """An RMSE table is sorted best first, which for an error is the lowest."""
    import report

    rows = [{"method": m, "seed": 0, "test": t, "valid": t, "best_epoch": 1, "total": 10, "trainable_outside_heads": 1, "train_seconds": 1.0, "metric": "rmse"}
            for m, t in (("worse", 1.2), ("better", 0.8))]
    table = report.peers_tables(_peers_result(rows))
    assert table.index("| better |") < table.index("| worse |")


def test_report_contents_links_every_heading_outside_code_to_githubs_anchor():
    """BENCHMARKS.md's contents block: `##` and `###` headings in order, `###` indented, anchors as
    GitHub makes them (punctuation dropped, a repeated heading suffixed), none from a code fence."""
    from report import contents

    text = ("# Benchmarks\n\n```bash\n## not a heading\n```\n## Speed\n### #14's bars (commit 55b458b, AMD EPYC)\n"
            "### K=8 routed: 1.1× one adapter\n## Quality\n### Speed\n")
    assert contents(text).splitlines() == [
        "- [Speed](#speed)",
        "  - [#14's bars (commit 55b458b, AMD EPYC)](#14s-bars-commit-55b458b-amd-epyc)",
        "  - [K=8 routed: 1.1× one adapter](#k8-routed-11-one-adapter)",
        "- [Quality](#quality)",
        "  - [Speed](#speed-1)",
    ]


def test_report_names_the_runs_trained_at_other_code_than_the_header():
    import report

    row = {"seed": 0, "test": 0.7, "valid": 0.7, "best_epoch": 1, "total": 10, "trainable_outside_heads": 1, "train_seconds": 1.0, "metric": "rocauc"}
    rows = [{**row, "method": "a", "code_commit": "x"}, {**row, "method": "b", "code_commit": "old1"}, {**row, "method": "b", "seed": 1, "code_commit": "old1"},
            {**row, "method": "c"}]  # c: a run from before run folders kept their commit
    table = report.peers_tables(_peers_result(rows))
    assert "Runs trained at other code (cft/ and recipes/ as at the commit named): b seeds 0, 1 at old1." in table
    assert "other code" not in report.peers_tables(_peers_result([rows[0], rows[3]]))


def test_report_renders_every_peer_method_with_its_seeds():
    """report.py's peers block: one row per method of the result file, its seeds' test scores and
    their mean, and the split's hash (the committed quick result serves as input)."""
    import json
    import statistics

    import report

    result = json.loads((REPO / "benchmarks" / "results" / "peers_quick.json").read_text())
    table = report.peers_tables(result)
    assert result["split"]["csv_sha256"][:12] in table
    for method in {r["method"] for r in result["rows"]}:
        tests = [r["test"] for r in result["rows"] if r["method"] == method]
        row = next(line for line in table.splitlines() if line.startswith(f"| {method} |"))
        assert f"{statistics.mean(tests):.4f}" in row and all(f"{t:.4f}" in row for t in tests), row
    assert "Withdrawn" not in table
    result["withdrawn"] = {"method": "m", "rows": [], "why": "trained with a bug"}
    assert "Withdrawn from this file: m (trained with a bug)" in report.peers_tables(result)


def test_report_orders_the_routing_levers_by_valid_score_with_their_entropy():
    import report

    machine = {"cpu": "c", "cores": 2, "torch": "t", "torch_threads": 1, "python": "3", "commit": "abc", "date": "d"}
    row = {"dataset": "toxcast", "seed": 0, "metric": "rocauc", "best_epoch": 3, "epochs": 9, "train_seconds": 10.0}
    result = {"machine": machine, "command": "x", "code_commit": "abc", "partial": False,
              "rows": [{**row, "method": "label prior", "valid": 0.60, "test": 0.61, "routing_entropy": 2.07},
                       {**row, "method": "label prior, pairnorm", "valid": 0.70, "test": 0.59, "routing_entropy": 1.5}]}
    lines = [line for line in report.levers_tables(result).splitlines() if line.startswith("| label")]
    assert lines[0].startswith("| label prior, pairnorm |") and "| 1.500 |" in lines[0], lines
    assert "| 2.070 |" in lines[1], lines


def test_prior_embeddings_reads_norms_spread_and_entropy_of_a_trained_bundle(tiny_parts):
    """benchmarks/prior_embeddings.py on a bundle trained through the CLI: E_0's RMS norm is that of
    the bundle's own task_embed tensor, the spreads are ratios in (0, 1], the entropy at most ln K."""
    import math

    import prior_embeddings
    from safetensors.torch import load_file

    (row,) = prior_embeddings.describe(tiny_parts["A"])
    e0 = next(v for k, v in load_file(str(tiny_parts["A"])).items() if k.endswith("task_embed"))
    assert math.isclose(row["rms_E0"], float(e0.pow(2).sum(-1).mean().sqrt()), rel_tol=1e-6)
    assert math.isclose(row["centred_rms_E0"], float((e0 - e0.mean(0)).pow(2).sum(-1).mean().sqrt()), rel_tol=1e-6)
    assert 0 < row["spread_propagated"] <= 1 + 1e-6 and 0 < row["spread_E0"] <= 1 + 1e-6
    assert 0 <= row["mean_routing_entropy"] <= row["ln_K"] + 1e-6 and row["tasks"] == e0.shape[0]


def test_backbone_probe_trains_heads_on_each_backbone_and_reports_its_identity(tmp_path, data_root):
    """benchmarks/backbone_probe.py end to end: head-only runs on each backbone file for each seed, on
    the probe's split file, one summary row per backbone with the fingerprint from the file's header."""
    import json
    import subprocess

    from cft.files.backbone import read_backbone_header

    committed = REPO / "cft" / "pretrained" / "gin-vn-300x5-masking-hiv.safetensors"
    twin = tmp_path / "twin.safetensors"
    twin.write_bytes(committed.read_bytes())  # a second file name: its own row and run folders
    out, target = tmp_path / "runs", tmp_path / "probe.json"
    command = [sys.executable, "benchmarks/backbone_probe.py", str(committed), str(twin), "--limit", "300", "--epochs", "1", "--seeds", "2",
               "--data", str(data_root), "--out", str(out), "--json", str(target)]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(target.read_text())
    assert not result["partial"] and len(result["rows"]) == 4 and all("error" not in r for r in result["rows"])
    assert {key: s["seeds"] for key, s in result["summary"].items()} == {"gin-vn-300x5-masking-hiv|head only": 2, "twin|head only": 2}
    assert sorted((r["dataset"], r["seed"]) for r in result["rows"]) == [("gin-vn-300x5-masking-hiv", 0), ("gin-vn-300x5-masking-hiv", 1), ("twin", 0), ("twin", 1)]
    fingerprint = read_backbone_header(committed)["fingerprint"]
    assert {b["fingerprint"] for b in result["backbones"].values()} == {fingerprint}
    same = {r["seed"]: r["test"] for r in result["rows"] if r["dataset"] == "twin"}
    assert same == {r["seed"]: r["test"] for r in result["rows"] if r["dataset"] == "gin-vn-300x5-masking-hiv"}, "one backbone, one result per seed"
    written = json.loads((out / "split-limit300" / "tox21_splits.json").read_text())
    runs = list(out.glob("limit300-epochs1/*/head_only/seed*"))
    assert len(runs) == 4, "a check trains in its own folder"
    for run in runs:
        recipe = yaml.safe_load((run / "recipe.yaml").read_text())
        assert recipe["adapters"]["enabled"] is False and recipe["backbone"]["freeze"] is True
        assert json.loads((run / "splits.json").read_text()) == written, f"{run} trained on another split"
    import report

    table = report.probe_tables(result)
    assert f"| `twin` | epochs 3, method masking, dropout 0.5 | `{fingerprint[:8]}…` | head only | " in table, table


def test_prior_spectrum_explains_the_scale_the_propagation_leaves(tmp_path, data_root):
    """benchmarks/prior_spectrum.py on Tox21: A_hat's largest eigenvalue is 1, propagation over the
    label prior shrinks random task embeddings (scale < 1), PairNorm restores their scale and spread
    exactly, and routes of smaller embeddings are flatter."""
    import json
    import subprocess

    target = tmp_path / "spectrum.json"
    done = subprocess.run([sys.executable, "benchmarks/prior_spectrum.py", "--datasets", "tox21", "--data", str(data_root), "--json", str(target)],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = {r["variant"]: r for r in json.loads(target.read_text())["rows"]}
    assert len(rows) == 5 and all(r["dataset"] == "tox21" and r["tasks"] == 12 and r["adapters"] == 4 for r in rows.values())
    assert all(abs(r["lambda_1"] - 1.0) < 1e-4 and r["lambda_2"] < 1.0 for r in rows.values())
    plain, norm, restart = rows["recipe (2 steps)"], rows["pairnorm"], rows["restart 0.5"]
    assert plain["scale_init"] < restart["scale_init"] < 1.0
    assert abs(norm["scale_init"] - 1.0) < 1e-4 and abs(norm["relative_spread_init"] - 1.0) < 1e-4
    assert norm["routing_entropy_init"] < restart["routing_entropy_init"] < plain["routing_entropy_init"] <= plain["ln_k"] + 1e-6
    assert "| tox21 (12 tasks, K=4) | pairnorm |" in done.stdout


def test_report_shows_the_last_layers_route_entropy_when_rows_carry_it():
    import report

    rows = [{"method": "routed", "seed": s, "test": 0.7, "valid": 0.7, "best_epoch": 3, "total": 10, "trainable_outside_heads": 1, "train_seconds": 1.0,
             "metric": "rocauc", "routing_entropy": {"0": 2.0, "4": e}} for s, e in ((0, 0.5), (1, 1.5))]
    rows.append({"method": "full", "seed": 0, "test": 0.6, "valid": 0.6, "best_epoch": 3, "total": 10, "trainable_outside_heads": 10, "train_seconds": 1.0, "metric": "rocauc"})
    result = _peers_result(rows)
    table = report.peers_tables(result)
    assert "last layer's route entropy (nats)" in table
    assert next(line for line in table.splitlines() if line.startswith("| routed |")).endswith(" 1.000 |")  # mean of layer 4's 0.5 and 1.5
    assert next(line for line in table.splitlines() if line.startswith("| full |")).endswith(" – |")
    assert "adapters chosen" not in table
    rows[0]["last_layer_use"], rows[1]["last_layer_use"] = {"chosen": 1, "of": 8, "balance": 0.0}, {"chosen": 5, "of": 8, "balance": 0.5}
    table = report.peers_tables(result)
    assert next(line for line in table.splitlines() if line.startswith("| routed |")).endswith(" 1.000 | 1, 5 of 8; 0.25 |")
    assert next(line for line in table.splitlines() if line.startswith("| full |")).endswith(" – | – |")
    del rows[:2]
    assert "route entropy" not in report.peers_tables(result)


def test_peers_reads_how_many_last_layer_adapters_the_tasks_choose(tmp_path):
    import numpy as np
    import peers
    from safetensors.numpy import save_file

    all_on_two = np.tile(np.eye(4, dtype=np.float32)[2], (6, 1))
    spread = np.eye(4, dtype=np.float32)[[0, 1, 2, 3, 0, 1]]
    save_file({"epoch0001/layer0": spread, "epoch0001/layer4": all_on_two, "epoch0002/layer0": all_on_two, "epoch0002/layer4": spread},
              str(tmp_path / "routing_history.safetensors"))
    history = tmp_path / "routing_history.safetensors"
    first = peers._last_layer_use(history, 1)
    assert first["chosen"] == 1 and first["of"] == 4 and abs(first["balance"]) < 1e-6
    second = peers._last_layer_use(history, 2)  # mean route (1/3, 1/3, 1/6, 1/6): entropy over ln 4
    assert second["chosen"] == 4 and abs(second["balance"] - float(-(2 * np.log(1 / 3) / 3 + np.log(1 / 6) / 3) / np.log(4))) < 1e-6
    assert peers._last_layer_use(history, 3) is None and peers._last_layer_use(tmp_path / "none.safetensors", 1) is None


def test_route_families_counts_each_familys_choices_and_scores_the_alignment():
    import numpy as np
    import route_families

    tasks = ["ATG_a", "ATG_b", "ATG_c", "NVS_a", "NVS_b", "NVS_c"]
    aligned = np.eye(3)[[0, 0, 0, 2, 2, 2]] * 0.8 + 0.2 / 3
    row = route_families.family_table(tasks, aligned)
    assert row["families"] == {"ATG": [3, 0, 0], "NVS": [0, 0, 3]} and row["chosen"] == 2 and row["per_adapter"] == [3, 0, 3]
    assert abs(row["nmi"] - 1.0) < 1e-9 and row["nmi_shuffled"] < row["nmi"]
    mixed = np.eye(3)[[0, 2, 0, 2, 0, 2]]  # each family split across the same two adapters: no alignment
    assert route_families.family_table(tasks, mixed)["nmi"] < 0.1


def test_pretraining_molecules_are_each_source_molecule_once_less_the_held_out_ones(tmp_path):
    """benchmarks/pretrain_backbone.py: molecules compared by canonical SMILES, so another spelling of a
    held-out (valid/test) molecule is held out too, and one molecule in both sources is kept once."""
    import pandas as pd
    import pretrain_backbone

    pd.DataFrame({"smiles": ["OCC", "c1ccccc1", "not a molecule", "CCN"], "HIV_active": [0, 1, 0, 0]}).to_csv(tmp_path / "HIV.csv.gz", index=False)
    pd.DataFrame({"smiles": ["C1=CC=CC=C1", "CCCl", "NCC"], "MUV-466": [0, None, 1]}).to_csv(tmp_path / "muv.csv.gz", index=False)
    held = {"tox21": {pretrain_backbone.canonical("CCO")}, "esol": {pretrain_backbone.canonical("CCN")}}
    kept, counts = pretrain_backbone.pretraining_molecules(tmp_path, held, limit=None)
    assert kept == [pretrain_backbone.canonical("c1ccccc1"), pretrain_backbone.canonical("CCCl")]
    assert counts["unparsable"] == 1 and counts["duplicates"] == 2 and counts["held_out"] == 2, counts  # benzene twice, ethylamine (CCN = NCC) twice
    assert counts["rows"] == {"HIV.csv.gz": 4, "muv.csv.gz": 3} and counts["pretraining_molecules"] == 2
    assert pretrain_backbone.pretraining_molecules(tmp_path, held, limit=1)[0] == kept[:1]


def test_eval_batch_times_inference_at_each_batch_size_and_reports_them(tmp_path, data_root):
    """benchmarks/eval_batch.py: one JSON row per batch size with a rate per repetition, and the
    report's table of them."""
    out = tmp_path / "eval_batch.json"
    subprocess.run([sys.executable, str(REPO / "benchmarks" / "eval_batch.py"), "--data", str(data_root), "--batch-sizes", "16,64",
                    "--repetitions", "2", "--threads", "1", "--limit", "120", "--json", str(out)], check=True, capture_output=True, text=True)
    result = json.loads(out.read_text())
    assert [r["batch_size"] for r in result["rows"]] == [16, 64] and result["molecules"] == 120
    assert all(len(r["graphs_per_s"]) == 2 and r["median_graphs_per_s"] > 0 for r in result["rows"])
    from report import eval_batch_tables

    table = eval_batch_tables(result)
    assert "| 16 |" in table and "| 64 |" in table and "1.00 |" in table and result["machine"]["commit"] in table


def test_speed_modes_are_chosen_by_whole_names_even_with_commas_in_them_or_by_parts():
    """`speed.py --modes`: a whole mode name selects that mode alone, even the one whose name holds a
    comma (it used to be split there and select three modes by its parts); other items are parts."""
    from speed import MODES, select_modes

    shipped = "cft adapters of the Tox21 recipe as shipped (r=10, virtual-node MLPs too), frozen products fp32"
    assert "," in shipped and shipped in MODES
    assert list(select_modes(f"cft full fine-tuning at batch 64,{shipped}")) == ["cft full fine-tuning at batch 64", shipped]
    assert list(select_modes("K=1 r=64")) == ["cft one adapter K=1 r=64"]
    assert set(select_modes("frozen products fp32")) == {m for m in MODES if "frozen products fp32" in m} and len(select_modes("frozen products fp32")) > 1
    assert select_modes(None) == MODES


def test_narrow_banks_times_the_recipe_padded_and_unpadded_and_reports_every_round(tmp_path, data_root):
    """benchmarks/narrow_banks.py: both settings in every round of one process, their ratio, and the
    report's table; recipes/tox21.yaml's banks are 10 units wide."""
    out = tmp_path / "narrow_banks.json"
    subprocess.run([sys.executable, str(REPO / "benchmarks" / "narrow_banks.py"), "--data", str(data_root), "--rounds", "2", "--steps", "2",
                    "--threads", "1", "--json", str(out)], check=True, capture_output=True, text=True)
    result = json.loads(out.read_text())
    assert result["bank_widths"] == [10] and result["batch_size"] == 64 and len(result["rounds"]) == 2
    for pair in result["rounds"]:
        assert pair["padded to 16"] > 0 and pair["unpadded"] > 0 and pair["ratio"] == pytest.approx(pair["padded to 16"] / pair["unpadded"])
    from report import narrow_banks_tables

    table = narrow_banks_tables(result)
    assert "| padded to 16 |" in table and "| unpadded |" in table and result["machine"]["commit"] in table and "of 2 rounds" in table


def test_frozen_constants_counts_fewer_forward_operators_when_kept_and_times_both_settings(tmp_path, data_root):
    """benchmarks/frozen_constants.py: the kept constants dispatch fewer forward operators (the same
    backward), both settings are timed in every round of training and inference, and the report renders."""
    out = tmp_path / "frozen_constants.json"
    subprocess.run([sys.executable, str(REPO / "benchmarks" / "frozen_constants.py"), "--data", str(data_root), "--rounds", "2", "--steps", "2",
                    "--threads", "1", "--json", str(out)], check=True, capture_output=True, text=True)
    result = json.loads(out.read_text())
    kept, recomputed = result["operators"]["kept"], result["operators"]["recomputed"]
    assert kept["training_forward"] < recomputed["training_forward"] and kept["inference"] < recomputed["inference"]
    assert kept["training_backward"] == recomputed["training_backward"]
    for what in ("training", "inference"):
        assert len(result[what]["rounds"]) == 2 and all(p["kept"] > 0 and p["recomputed"] > 0 for p in result[what]["rounds"])
    from report import frozen_constants_tables

    table = frozen_constants_tables(result)
    assert "| inference pass |" in table and table.count("Kept / recomputed") == 2


def test_merged_updates_counts_fewer_backward_operators_merged_and_times_both_settings(tmp_path, data_root):
    """benchmarks/merged_updates.py: merging the recipe's linear banks dispatches fewer backward and
    inference operators, changes values by rounding only, both settings are timed in every round,
    and the report renders."""
    out = tmp_path / "merged_updates.json"
    subprocess.run([sys.executable, str(REPO / "benchmarks" / "merged_updates.py"), "--data", str(data_root), "--rounds", "2", "--steps", "2",
                    "--threads", "1", "--json", str(out)], check=True, capture_output=True, text=True)
    result = json.loads(out.read_text())
    merged, apart = result["operators"]["merged"], result["operators"]["apart"]
    assert merged["training_backward"] < apart["training_backward"] and merged["inference"] < apart["inference"]
    assert result["logits_max_relative_difference"] < 1e-4 and result["gradients_max_relative_difference"] < 0.1
    for what in ("training", "inference"):
        assert len(result[what]["rounds"]) == 2 and all(p["merged"] > 0 and p["apart"] > 0 for p in result[what]["rounds"])
    from report import merged_updates_tables

    table = merged_updates_tables(result)
    assert "| inference pass |" in table and table.count("Merged / apart") == 2


def test_scatter_kernels_gives_the_same_values_bit_for_bit_and_times_both_settings(tmp_path, data_root):
    """benchmarks/scatter_kernels.py: the recipe's model with index_add_ sums and with PyG's
    scatter_add_ computes the same logits and gradients, both settings are timed in every round,
    and the report renders."""
    out = tmp_path / "scatter_kernels.json"
    subprocess.run([sys.executable, str(REPO / "benchmarks" / "scatter_kernels.py"), "--data", str(data_root), "--rounds", "2", "--steps", "2",
                    "--threads", "1", "--json", str(out)], check=True, capture_output=True, text=True)
    result = json.loads(out.read_text())
    assert result["logits_equal"] and result["gradients_equal"]
    assert set(result["operators"]) == {"index_add_", "scatter_add_"}
    for what in ("training", "inference"):
        assert len(result[what]["rounds"]) == 2 and all(p["index_add_"] > 0 and p["scatter_add_"] > 0 for p in result[what]["rounds"])
    from report import scatter_kernels_tables

    table = scatter_kernels_tables(result)
    assert "| inference pass |" in table and table.count("index_add_ / scatter_add_") == 2 and "bit for bit" in table


def test_frozen_precision_times_the_three_settings_in_every_round_and_the_report_renders(tmp_path, data_root):
    """benchmarks/frozen_precision.py: fp32, bf16 input gradients and both products in bf16 timed in
    every round of one process, their ratios to fp32 from those rounds, and the report's table."""
    out = tmp_path / "frozen_precision.json"
    subprocess.run([sys.executable, str(REPO / "benchmarks" / "frozen_precision.py"), "--data", str(data_root), "--rounds", "2", "--steps", "2",
                    "--threads", "1", "--json", str(out)], check=True, capture_output=True, text=True)
    result = json.loads(out.read_text())
    names = ("fp32", "input gradients bf16", "both products bf16")
    assert len(result["rounds"]) == 2 and all(r[n] > 0 for r in result["rounds"] for n in names)
    ratios = [r["input gradients bf16"] / r["fp32"] for r in result["rounds"]]
    assert result["ratio_to_fp32"]["input gradients bf16"]["median"] == pytest.approx(sum(ratios) / 2)
    assert set(result["ratio_to_fp32"]) == {"input gradients bf16", "both products bf16"}
    from report import frozen_precision_tables

    table = frozen_precision_tables(result)
    assert "| input gradients bf16 |" in table and "| median |" in table and result["machine"]["commit"] in table


def test_routing_cost_times_the_three_models_with_the_trainers_loss_in_every_round(tmp_path, data_root):
    """benchmarks/routing_cost.py: K=8 routed, K=1 r=64 and K=1 r=8 timed in every round of one
    process, the step-time ratios from those rounds, and the report's table."""
    out = tmp_path / "routing_cost.json"
    subprocess.run([sys.executable, str(REPO / "benchmarks" / "routing_cost.py"), "--data", str(data_root), "--rounds", "2", "--steps", "2",
                    "--threads", "1", "--json", str(out)], check=True, capture_output=True, text=True)
    result = json.loads(out.read_text())
    from routing_cost import ONE, ROUTED, SAME_WIDTH

    assert len(result["rounds"]) == 2 and all(r[n] > 0 for r in result["rounds"] for n in (ROUTED, SAME_WIDTH, ONE))
    # the routed model trains the router (task embeddings, keys, query) beside a bank as wide as K=1 r=64's
    assert result["trainable"][ROUTED] > result["trainable"][SAME_WIDTH] > result["trainable"][ONE] and result["reg_strength"] > 0
    bar = next(r for name, r in result["step_time_ratios"].items() if "target <= 1.1" in name)
    assert bar["per_round"] == pytest.approx([r[SAME_WIDTH] / r[ROUTED] for r in result["rounds"]])
    from report import routing_cost_tables

    table = routing_cost_tables(result)
    assert "target <= 1.1" in table and "| median |" in table and result["machine"]["commit"] in table


def test_step_profile_splits_the_steps_operator_time_and_rates_the_products(tmp_path, data_root):
    """benchmarks/step_profile.py: the profiled steps' operator time in groups that add up to all of
    it, the frozen Linears' products among the large ones with their FLOPs, the reference product
    timed alone, and the report's table."""
    out = tmp_path / "step_profile.json"
    subprocess.run([sys.executable, str(REPO / "benchmarks" / "step_profile.py"), "--data", str(data_root), "--steps", "2", "--warmup", "1",
                    "--threads", "1", "--json", str(out)], check=True, capture_output=True, text=True)
    result = json.loads(out.read_text())
    groups = result["groups"]
    assert sum(g["share"] for g in groups.values()) == pytest.approx(1.0)
    assert sum(g["seconds"] for g in groups.values()) == pytest.approx(result["profiled_self_seconds"])
    # recipes/tox21.yaml: ten frozen GIN Linears a step, each over the batch's atoms (fp32 forward)
    large = groups["large products, fp32"]
    assert large["calls"] >= 2 * 10 and large["flops"] > 2 * 10 * 50e6 and large["gflops"] > 0
    assert "message passing (gathers, scatters)" in groups and any(name.startswith("small products") for name in groups)
    assert result["reference"]["fp32"]["alone_gflops"] > 0 and result["graphs_per_second"] > 0
    from report import step_profile_tables

    table = step_profile_tables(result)
    assert "| large products, fp32 |" in table and "GFLOP/s alone" in table and result["machine"]["commit"] in table


def test_optimizer_step_times_each_adamw_implementation_on_both_parameter_sets(tmp_path, data_root):
    """benchmarks/optimizer_step.py: every implementation timed on the recipe's trainable tensors and
    on the whole backbone's, and the report renders both."""
    out = tmp_path / "optimizer_step.json"
    subprocess.run([sys.executable, str(REPO / "benchmarks" / "optimizer_step.py"), "--data", str(data_root), "--rounds", "2", "--steps", "2",
                    "--threads", "1", "--json", str(out)], check=True, capture_output=True, text=True)
    result = json.loads(out.read_text())
    recipe, full = result["sets"]["the Tox21 recipe's adapters"], result["sets"]["full fine-tuning"]
    assert recipe["weights"] < full["weights"] and full["weights"] > 3_000_000
    for each in (recipe, full):
        assert set(each["median_ms"]) == {"per-tensor loop", "foreach", "fused"} and all(len(t) == 2 for t in each["ms_per_round"].values())
    from report import optimizer_step_tables

    assert "| full fine-tuning |" in optimizer_step_tables(result)


def test_pretraining_within_minutes_times_one_epoch_of_a_sample_then_fits_whole_epochs(tmp_path, monkeypatch):
    """benchmarks/pretrain_backbone.py --minutes M (what gpu_pretrain.sh runs): one timed epoch over the
    first 10,000 molecules, then as many whole epochs of the full list as fit in M minutes, at least one;
    the probe's backbone and temporary files are removed."""
    import argparse

    import pretrain_backbone

    probed, leftovers = [], []

    def fake_pretrain(smiles, args):  # 1 ms per molecule, whatever the machine
        probed.append((len(smiles), args.epochs))
        folder = tmp_path / f"probe{len(probed)}"
        folder.mkdir()
        args.out.write_bytes(b"")
        leftovers.extend([folder, args.out])
        return folder, {"seconds": 0.001 * len(smiles)}

    monkeypatch.setattr(pretrain_backbone, "pretrain", fake_pretrain)
    args = argparse.Namespace(epochs=10, out=tmp_path / "b.safetensors")
    smiles = ["C"] * 134_000
    epochs, how = pretrain_backbone.epochs_within(5, smiles, args)
    assert probed == [(10_000, 1)] and args.epochs == 10  # one epoch of the sample; the caller's settings untouched
    assert epochs == 2 and how["seconds_per_molecule"] == 0.001  # 134 s an epoch: two fit in 300 s
    assert pretrain_backbone.epochs_within(0.01, smiles, args)[0] == 1  # never none
    assert pretrain_backbone.epochs_within(5, smiles[:500], args)[0] == 600  # a short list: its own length probed
    assert not any(path.exists() for path in leftovers)


def test_gpu_throughput_runs_its_variants_on_a_cpu_over_a_few_source_molecules(tmp_path, data_root):
    """benchmarks/gpu_throughput.py (what benchmarks/gpu.sh runs on a lent GPU, whose minutes are
    few): its variants train and infer through the real trainer on a CPU, here over the first 60
    molecules of each source file repeated to 400, and the result names every variant's rates."""
    out = tmp_path / "gpu.json"
    subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_throughput.py"), "--data", str(data_root), "--device", "cpu",
                    "--source-molecules", "60", "--molecules", "400", "--batch-size", "32", "--graphs", "64", "--infer-graphs", "64",
                    "--variants", "batch 32", "--json", str(out)], check=True, capture_output=True, text=True, env=os.environ | {"CFT_QUIET": "1"})
    result = json.loads(out.read_text())
    assert result["molecules"] == 400 and result["device"] == "CPU" and result["atoms"] > 400
    assert set(result["rows"]) == {"adapters every layer (K=8 r=16), batch 32", "adapters layers 3-4 (K=8 r=16), prefix cached, batch 32",
                                   "full fine-tuning, batch 32"}
    for row in result["rows"].values():
        assert row["train_graphs_per_s"] > 0 and row["infer_graphs_per_s"] > 0 and row["gpu_peak_gib"] is None
    cached = result["rows"]["adapters layers 3-4 (K=8 r=16), prefix cached, batch 32"]
    assert cached["prefix_seconds"] > 0 and cached["trainable"] < result["rows"]["adapters every layer (K=8 r=16), batch 32"]["trainable"]
