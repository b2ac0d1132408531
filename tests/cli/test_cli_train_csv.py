"""`cft train --data CSV` without a recipe: the shipped `default` recipe, chemprop-style options, --set on top."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import assert_user_error, run_cli, run_cli_inprocess

# small enough for a test: the default recipe's model, shrunk by --set, on a backbone pretrained
# for one epoch on the embedded molecules instead of the shipped 300x5 one
SMALL = ["--set", "backbone.pretrained=null", "--set", "backbone.pretrain.data.source=builtin", "--set", "backbone.num_layers=2", "--set", "backbone.hidden=16", "--set", "backbone.pretrain.epochs=1",
         "--set", "adapters.rank=2", "--set", "adapters.num_adapters=2", "--set", "train.epochs=2", "--set", "data.split.method=random"]


@pytest.fixture(scope="module")
def csv(tmp_path_factory) -> Path:
    from reliability_kit import molecules

    path = tmp_path_factory.mktemp("csv") / "mine.csv"
    rows = ["structure,has_N,has_O,size"] + [f"{s},{int('N' in s)},{int('O' in s)},{len(s) / 10:.1f}" for s in molecules(160)]
    path.write_text("\n".join(rows) + "\n")
    return path


def test_recipes_show_default_prints_the_shipped_default():
    result = run_cli_inprocess("recipes", "show", "default")
    assert result.returncode == 0, result.stderr
    shown = yaml.safe_load(result.stdout)
    assert shown["data"]["source"] == "csv" and shown["backbone"]["pretrained"] == "gin-vn-300x5-masking-hiv" and shown["backbone"]["pretrain"] is None
    listed = run_cli_inprocess("recipes", "list")
    assert "default.yaml" in listed.stdout


def test_recipes_show_writes_valid_yaml_whatever_the_terminal_width(tmp_path):
    """`cft recipes show default > mine.yaml` on a narrow terminal (or redirected: 80 columns) gives the
    same recipe back: the YAML is not re-wrapped (the default's description is longer than 80 columns)."""
    result = run_cli("recipes", "show", "default", env={"COLUMNS": "40"})
    assert result.returncode == 0, result.stderr
    mine = tmp_path / "mine.yaml"
    mine.write_text(result.stdout)
    assert run_cli("recipes", "validate", mine).returncode == 0
    wide = run_cli_inprocess("recipes", "show", "default")
    assert yaml.safe_load(result.stdout) == yaml.safe_load(wide.stdout)


def test_train_a_csv_without_a_recipe(csv, tmp_path):
    run = tmp_path / "run"
    result = run_cli("train", "--data", csv, "--smiles-column", "structure", "--tasks", "has_N,has_O", "--task-type", "classification",
                     "-o", run, *SMALL)
    assert result.returncode == 0, result.stderr
    recipe = yaml.safe_load((run / "recipe.yaml").read_text())
    assert recipe["data"]["path"] == str(csv.resolve()) and recipe["data"]["smiles_column"] == "structure"
    assert recipe["data"]["tasks"] == ["has_N", "has_O"] and recipe["data"]["task_type"] == "classification"
    assert recipe["train"]["epochs"] == 2 and recipe["backbone"]["hidden"] == 16, "every --set still applies"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["metric"] == "rocauc" and summary["tasks"] == ["has_N", "has_O"] and summary["epochs_run"] == 2
    assert (run / "splits.json").exists() and "test rocauc" in result.stdout
    # regression by --task-type (chemprop's -t), the other columns left out with --set
    reg = run_cli("train", "-i", csv, "-t", "regression", "--tasks", "size", "-o", tmp_path / "reg", *SMALL)
    assert reg.returncode == 0, reg.stderr
    summary = json.loads((tmp_path / "reg" / "summary.json").read_text())
    assert summary["metric"] == "rmse" and summary["tasks"] == ["size"]


def test_train_on_a_seeded_balanced_scaffold_split(csv, tmp_path):
    """chemprop's `--split-type scaffold_balanced --data-seed 2` as `--set data.split.method=scaffold_balanced
    --set data.split.seed=2`: the run folder's splits.json holds that split, another seed another one."""
    import pandas as pd

    from cft.data.split import balanced_scaffold_split

    smiles = pd.read_csv(csv)["structure"].tolist()
    splits = {}
    for seed in (2, 3):
        run = tmp_path / f"seed{seed}"
        result = run_cli("train", "--data", csv, "--smiles-column", "structure", "--tasks", "has_N,has_O", "-o", run, *SMALL,
                         "--set", "data.split.method=scaffold_balanced", "--set", f"data.split.seed={seed}")
        assert result.returncode == 0, result.stderr
        written = json.loads((run / "splits.json").read_text())[0]
        expected = balanced_scaffold_split(smiles, (0.8, 0.1, 0.1), seed)
        assert {k: sorted(written[k]) for k in ("train", "val", "test")} == {
            "train": expected["train"].tolist(), "val": expected["valid"].tolist(), "test": expected["test"].tolist()}
        splits[seed] = written
    assert splits[2] != splits[3]
    refused = run_cli_inprocess("train", "--data", csv, "-o", tmp_path / "x", *SMALL, "--set", "data.split.method=balanced")
    assert_user_error(refused, "data.split.method", "scaffold_balanced")


def test_train_csv_refusals(csv, tmp_path):
    assert_user_error(run_cli_inprocess("train"), "needs a RECIPE or --data CSV")
    assert_user_error(run_cli_inprocess("train", "recipes/quickstart.yaml", "--tasks", "a"), "--smiles-column, --tasks and --task-type apply to --data CSV")
    refused = run_cli_inprocess("train", "--data", csv, "-t", "classification", "--tasks", "size", "-o", tmp_path / "x", *SMALL)
    assert_user_error(refused, "column 'size'", "says binary but the labels are not all 0/1")
    assert_user_error(run_cli_inprocess("train", "--data", tmp_path / "nope.csv", "-o", tmp_path / "y"), "nope.csv does not exist")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_masking_pretrains_on_a_csv_of_smiles_alone(csv, tmp_path):
    """Self-supervised pretraining never reads a label, so its data may be a file of SMILES only
    (the unlabelled molecules a practitioner has most of); supervised pretraining still needs labels."""
    import pandas as pd

    smiles = tmp_path / "unlabelled.csv"
    pd.read_csv(csv)[["structure"]].rename(columns={"structure": "smiles"}).to_csv(smiles, index=False)
    pretrain = ["--set", "backbone.pretrain.data.source=csv", "--set", f"backbone.pretrain.data.path={smiles}"]
    run = tmp_path / "run"
    result = run_cli("train", "--data", csv, "--smiles-column", "structure", "--tasks", "has_N,has_O", "-o", run, *SMALL, *pretrain)
    assert result.returncode == 0, result.stderr
    made = json.loads((run / "summary.json").read_text())
    assert yaml.safe_load((run / "recipe.yaml").read_text())["backbone"]["pretrain"]["data"]["path"] == str(smiles)
    assert made["epochs_run"] == 2 and (run / "backbone.safetensors").exists()
    supervised = run_cli_inprocess("train", "--data", csv, "--smiles-column", "structure", "--tasks", "has_N,has_O", "-o", tmp_path / "sup",
                                   *SMALL, *pretrain, "--set", "backbone.pretrain.method=supervised")
    assert_user_error(supervised, "unlabelled.csv: no task columns")
    assert not (tmp_path / "sup").exists()
