"""The backbone shipped with cft (`backbone.pretrained`): the dataset recipes train on it without a
pretrain stage, its bundles find it with nothing beside them, and a wrong file, a wrong
architecture or two sources of starting weights are refused."""

from __future__ import annotations

import json
import re
from fnmatch import fnmatch

import pytest
from conftest import REPO, assert_user_error, run_cli
from reliability_kit import cli

from cft.spec import PRETRAINED_BACKBONES

NAME = "gin-vn-300x5-masking-hiv"
TINY_RUN = ["--set", "data.limit=300", "--set", "train.epochs=1", "--set", "train.threads=1", "--set", "eval.batch_size=256"]


@pytest.fixture(scope="module")
def tox21_only(tmp_path_factory, data_root):
    """A data root that holds tox21.csv and nothing else: no HIV.csv.gz to pretrain on."""
    root = tmp_path_factory.mktemp("tox21-only")
    (root / "tox21.csv").symlink_to(data_root / "tox21.csv")
    return root


def test_every_name_a_recipe_accepts_has_its_file_with_the_recorded_fingerprint():
    from cft.files.backbone import read_backbone_header
    from cft.files.pretrained import SHIPPED, shipped_path

    assert tuple(SHIPPED) == PRETRAINED_BACKBONES
    # pyproject's `[tool.setuptools.package-data] cft = [...]` (tomllib is 3.11+; cft supports 3.10)
    globs = re.findall(r'"([^"]+)"', re.search(r"^cft = \[(.*)\]$", (REPO / "pyproject.toml").read_text().split("[tool.setuptools.package-data]")[1], re.M).group(1))
    for entry in SHIPPED.values():
        path = shipped_path(entry.name)
        assert read_backbone_header(path)["fingerprint"] == entry.fingerprint
        assert any(fnmatch(str(path.relative_to(REPO / "cft")), g) for g in globs), "the wheel must carry it"


def test_a_replaced_file_is_refused(tmp_path, monkeypatch):
    """A file of the right architecture but other weights, under the shipped name, is not trained on."""
    import torch

    import cft.files.pretrained as pretrained
    from cft.errors import CftError
    from cft.files.backbone import read_backbone_header, save_backbone
    from cft.nn.backbone import Backbone
    from cft.spec import BackboneSpec

    spec = BackboneSpec(**read_backbone_header(pretrained.shipped_path(NAME))["config"])
    torch.manual_seed(0)
    save_backbone(Backbone(spec), tmp_path / f"{NAME}.safetensors")
    monkeypatch.setattr(pretrained, "shipped_folder", lambda: tmp_path)
    with pytest.raises(CftError, match="not the shipped backbone"):
        pretrained.load_shipped(NAME)


def test_an_installation_without_the_file_says_so(tmp_path, monkeypatch):
    """A wheel built without its package data: naming the backbone is refused with what to do, and
    bundles simply do not find it there (no error from the search itself)."""
    import cft.files.pretrained as pretrained
    from cft.errors import CftError

    monkeypatch.setattr(pretrained, "shipped_folder", lambda: tmp_path)
    with pytest.raises(CftError, match="missing from this installation") as refused:
        pretrained.load_shipped(NAME)
    assert "Reinstall cft" in (refused.value.hint or "")
    assert pretrained.shipped_files() == []


def test_the_tox21_recipe_trains_on_the_shipped_backbone_and_its_bundle_finds_it(tox21_only, tmp_path):
    run = tmp_path / "run"
    result = run_cli("train", "recipes/tox21.yaml", "--data-root", tox21_only, "-o", run, *TINY_RUN)
    assert result.returncode == 0, result.stderr
    summary = json.loads((run / "summary.json").read_text())
    assert summary["backbone"]["source"] == "file" and summary["backbone"]["pretrained"] == NAME
    from cft.files.bundle import read_bundle_info
    from cft.files.pretrained import SHIPPED

    assert read_bundle_info(run / "bundle.safetensors").backbone_fingerprint == SHIPPED[NAME].fingerprint
    (run / "backbone.safetensors").unlink()  # nothing beside the bundle: eval finds the shipped file
    scored = run_cli("eval", run, "--data-root", tox21_only, "--split", "test", "--json", tmp_path / "test.json")
    assert scored.returncode == 0, scored.stderr
    assert json.loads((tmp_path / "test.json").read_text())["mean"] == pytest.approx(summary["test"]["mean"], abs=1e-6)


def test_another_architecture_is_refused_before_anything_is_written(tox21_only, tmp_path):
    run = tmp_path / "run"
    result = run_cli("train", "recipes/tox21.yaml", "--data-root", tox21_only, "-o", run, *TINY_RUN, "--set", "backbone.hidden=64")
    assert_user_error(result, f"backbone.pretrained {NAME} is not the backbone the recipe describes", "hidden: 300 in the file, 64 in the recipe")
    assert not run.exists()


def test_two_sources_of_starting_weights_are_refused_with_the_way_out(tmp_path):
    result = cli("recipes", "validate", str(REPO / "recipes" / "tox21.yaml"), "--set", f"backbone.path={tmp_path / 'mine.safetensors'}")
    assert_user_error(result, "give one of backbone.pretrained, backbone.path and backbone.pretrain", "--set backbone.pretrained=null")
    unknown = cli("recipes", "validate", str(REPO / "recipes" / "tox21.yaml"), "--set", "backbone.pretrained=gin-vn-tiny")
    assert_user_error(unknown, "backbone.pretrained", NAME)


def test_recipes_backbones_lists_what_ships():
    result = cli("recipes", "backbones")
    assert result.returncode == 0, result.stderr
    from cft.files.pretrained import SHIPPED

    for entry in SHIPPED.values():
        assert entry.name in result.stdout and entry.fingerprint in result.stdout


def test_a_csv_without_a_recipe_trains_on_the_shipped_backbone(tox21_only, tmp_path):
    """`cft train --data CSV` (the default recipe) starts from the shipped backbone: no pretraining."""
    run = tmp_path / "run"
    result = run_cli("train", "--data", tox21_only / "tox21.csv", "--tasks", "NR-AR,SR-p53", "-o", run, *TINY_RUN)
    assert result.returncode == 0, result.stderr
    from cft.files.pretrained import shipped_path

    assert json.loads((run / "summary.json").read_text())["backbone"] == {"source": "file", "path": str(shipped_path(NAME)), "pretrained": NAME}


def test_bundles_trained_apart_on_the_shipped_backbone_compose_with_nothing_beside_them(tox21_only, tmp_path):
    """Two people train the Tox21 recipe on different assays, each on their own machine: the shipped
    backbone is the same bytes, so their bundles compose (no backbone file travels with them), and
    the composed bundle predicts each assay as its own bundle did (route mode, no propagation)."""
    import pandas as pd

    bundles = {}
    for name, tasks in (("nr", '["NR-*"]'), ("sr", '["SR-*"]')):
        run = tmp_path / name
        result = run_cli("train", "recipes/tox21.yaml", "--data-root", tox21_only, "-o", run, *TINY_RUN, "--set", f"data.tasks={tasks}")
        assert result.returncode == 0, result.stderr
        (run / "backbone.safetensors").unlink()
        bundles[name] = tmp_path / f"{name}.safetensors"
        (run / "bundle.safetensors").rename(bundles[name])  # alone in a folder of bundles: nothing to find beside it
    composed = tmp_path / "nr_sr.safetensors"
    result = run_cli("compose", bundles["nr"], bundles["sr"], "--compose-steps", "0", "-o", composed)
    assert result.returncode == 0, result.stderr
    smiles = tmp_path / "molecules.csv"
    pd.read_csv(tox21_only / "tox21.csv", usecols=["smiles"]).head(40).to_csv(smiles, index=False)
    frames = {}
    for name, bundle in (("nr", bundles["nr"]), ("sr", bundles["sr"]), ("nr_sr", composed)):
        out = tmp_path / f"{name}.csv"
        predicted = run_cli("predict", bundle, "--input", smiles, "-o", out)
        assert predicted.returncode == 0, predicted.stderr
        frames[name] = pd.read_csv(out)
    for part in ("nr", "sr"):
        tasks = [c for c in frames[part].columns if c[:3] in ("NR-", "SR-")]
        assert tasks and all(abs(frames["nr_sr"][t] - frames[part][t]).max() < 2e-6 for t in tasks), part
