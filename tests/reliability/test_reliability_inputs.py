"""Bad input through the CLI: a clear error, exit code 2, no traceback, nothing half-written.

One row of docs/reliability.md per case. Most cases run the real CLI in-process (`reliability_kit.cli`:
same parsing, same error handler, same exit code; the heavy imports are paid once); a few run it as
a real subprocess to show that a process, too, exits 2 without a traceback.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from conftest import TINY_RECIPE, assert_user_error, run_cli
from reliability_kit import (
    BUILTIN_TASKS,
    CSV_CASES,
    assert_unchanged,
    bad_backbones,
    bad_bundles,
    bad_csvs,
    bad_priors,
    cli,
    labelled_csv,
    snapshot,
)

TINY = yaml.safe_load(TINY_RECIPE)


def _recipe(folder: Path, name: str = "r.yaml", **sections) -> Path:
    """TINY_RECIPE with sections merged one level deep (`data` is replaced whole)."""
    raw = json.loads(json.dumps(TINY))
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(raw.get(key), dict) and key != "data":
            raw[key] = {**raw[key], **value}
        else:
            raw[key] = value
    path = folder / name
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def _train_refused(recipe: Path, run: Path, *fragments: str, extra: tuple = ()) -> None:
    """`cft train` refuses with exit 2 and leaves neither the run folder nor anything beside it."""
    before = snapshot(run.parent)
    assert_user_error(cli("train", recipe, "-o", run, *extra), *fragments)
    assert not run.exists(), f"a refused run left {sorted(p.name for p in run.iterdir())}"
    assert_unchanged(before, run.parent)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tiny")
    recipe = folder / "tiny.yaml"
    recipe.write_text(TINY_RECIPE.replace("epochs: 3", "epochs: 1"))
    run = folder / "run"
    result = cli("train", recipe, "-o", run)
    assert result.returncode == 0, result.stderr
    return run


# ------------------------------------------------------------------ recipes

RECIPES = {
    "yaml_syntax": ("train:\n  epochs: 3\n  lr: [0.1\nadapters:\n  rank: 2\n", (), ("invalid YAML", "line 4")),
    "yaml_tab": ("train:\n\tepochs: 3\n", (), ("invalid YAML", "line 2")),
    "not_utf8": (b"seed: \xff\xfe\n", (), ("Cannot read recipe",)),
    "unknown_key": ("trian:\n  epochs: 3\n", (), ("trian (line 1): unknown field (did you mean `train`?)",)),
    "wrong_type": ("train:\n  epochs: lots\n", (), ("train.epochs (line 2): must be an integer, got 'lots'",)),
    "negative_temperature": ("routing:\n  temperature: -0.5\n", (), ("routing.temperature (line 2): must be > 0, got -0.5",)),
    "threshold_one": ("routing:\n  threshold: 1\n", (), ("routing.threshold (line 2): must be < 1, got 1",)),
    "rank_zero": ("adapters:\n  rank: 0\n", (), ("adapters.rank (line 2): must be >= 1, got 0",)),
    "k_zero": ("adapters:\n  num_adapters: 0\n", (), ("adapters.num_adapters (line 2): must be >= 1, got 0",)),
    "set_unknown_path": ("seed: 1\n", ("--set", "routing.temprature=0.5"), ("--set routing.temprature", "did you mean `temperature`")),
    "set_inside_a_value": ("seed: 1\n", ("--set", "seed.x=1"), ("is a value, not a section",)),
    "set_bad_value": ("seed: 1\n", ("--set", "adapters.rank=0"), ("adapters.rank: must be >= 1, got 0",)),
    "set_without_equals": ("seed: 1\n", ("--set", "adapters.rank"), ("expected key.path=value",)),
    "alias_bomb": ("a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\nc: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\n"
                   "d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\ne: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]\n"
                   "f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]\ng: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]\n"
                   "train:\n  epochs: *g\n", (), ("train.epochs (line 9): must be an integer",)),
}


@pytest.mark.parametrize("case", sorted(RECIPES))
def test_bad_recipe_is_refused_before_anything_is_written(tmp_path, case):
    text, extra, fragments = RECIPES[case]
    path = tmp_path / "bad.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    _train_refused(path, tmp_path / "run", *fragments, extra=extra)


def test_missing_recipe_file_through_train(tmp_path):
    _train_refused(tmp_path / "absent.yaml", tmp_path / "run", "Recipe file", "does not exist")
    assert_user_error(cli("recipes", "show", tmp_path), "is a folder, not a YAML file")


# ------------------------------------------------------------------ data


@pytest.mark.parametrize("case", CSV_CASES)
def test_bad_csv_is_refused_before_anything_is_written(tmp_path, case):
    cases = bad_csvs(tmp_path)
    assert sorted(cases) == sorted(CSV_CASES), "keep CSV_CASES (and docs/reliability.md) in step with bad_csvs()"
    text, settings, expected = cases[case]
    csv = tmp_path / "data.csv"
    if text is not None:
        csv.write_bytes(text if isinstance(text, bytes) else text.encode())
    recipe = _recipe(tmp_path, data={"source": "csv", "path": str(csv), **settings}, adapters={"num_adapters": 2, "rank": 2})
    _train_refused(recipe, tmp_path / "run", expected)


def test_unparseable_smiles_are_skipped_and_listed(tmp_path):
    csv = labelled_csv(tmp_path / "d.csv", 100)
    with open(csv, "a") as fh:
        fh.write("C1CC,1,0\nnot_a_molecule,0,1\nC(C,1,1\n")
    recipe = _recipe(tmp_path, data={"source": "csv", "path": str(csv), "split": {"method": "random"}}, train={"epochs": 1})
    result = cli("train", recipe, "-o", tmp_path / "run")
    assert result.returncode == 0, result.stderr
    assert "skipped 3 SMILES" in result.stderr
    import pandas as pd

    skipped = pd.read_csv(tmp_path / "run" / "skipped_smiles.csv")
    assert skipped["row"].tolist() == [102, 103, 104]
    assert skipped["smiles"].tolist() == ["C1CC", "not_a_molecule", "C(C"]
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["skipped_smiles"] == 3
    strict = _recipe(tmp_path, "strict.yaml", data={"source": "csv", "path": str(csv), "split": {"method": "random"}, "strict": True})
    _train_refused(strict, tmp_path / "strict-run", "3 SMILES cannot be parsed", "row 102: 'C1CC'", "data.strict: false")


def test_incomplete_ogb_folder_is_refused_without_prompting(tmp_path):
    folder = tmp_path / "root" / "ogbg_moltox21"
    (folder / "raw").mkdir(parents=True)
    (folder / "raw" / "edge.csv.gz").write_bytes(b"")
    (folder / "split" / "scaffold").mkdir(parents=True)
    recipe = _recipe(tmp_path, data={"source": "ogb", "name": "ogbg-moltox21"})
    _train_refused(recipe, tmp_path / "run", "incomplete: missing RELEASE_v1.txt, raw/num-node-list.csv.gz", "mapping/mol.csv.gz", extra=("--data-root", tmp_path / "root"))


def test_unknown_ogb_dataset_is_refused(tmp_path):
    recipe = _recipe(tmp_path, data={"source": "ogb", "name": "ogbg-molnothing"})
    _train_refused(recipe, tmp_path / "run", "is not an OGB molecule dataset", extra=("--data-root", tmp_path))


# ------------------------------------------------------------------ priors


PRIOR_CASES = [
    "asymmetric", "csv_header_index", "csv_names", "csv_not_numbers", "csv_unreadable", "garbage", "huge_shape", "inf", "missing", "nan",
    "negative", "not_square", "pickled", "strings", "suffix", "three_d", "truncated", "wrong_shape",
]


@pytest.mark.parametrize("case", PRIOR_CASES)
def test_bad_prior_file_is_refused_before_anything_is_written(tmp_path, case):
    cases = bad_priors(BUILTIN_TASKS, tmp_path / "priors")
    assert sorted(cases) == PRIOR_CASES, "keep PRIOR_CASES (and docs/reliability.md) in step with bad_priors()"
    bad = cases[case]
    recipe = _recipe(tmp_path, prior={"source": "file", "path": str(bad.path)})
    _train_refused(recipe, tmp_path / "run", bad.expected)
    assert not (tmp_path / "priors" / "CANARY-unpickled").exists(), "the pickled .npy was unpickled"


def test_learned_prior_initialised_from_a_bad_file_is_refused(tmp_path):
    bad = bad_priors(BUILTIN_TASKS, tmp_path / "priors")["negative"]
    recipe = _recipe(tmp_path, prior={"source": "learned", "init": "file", "path": str(bad.path)})
    _train_refused(recipe, tmp_path / "run", bad.expected)


def test_prior_csv_in_another_task_order_is_accepted(tmp_path):
    import numpy as np
    import pandas as pd

    t = len(BUILTIN_TASKS)
    matrix = np.eye(t, dtype=np.float32)
    matrix[0, 1] = matrix[1, 0] = 0.7
    order = list(reversed(BUILTIN_TASKS))
    frame = pd.DataFrame(matrix[::-1, ::-1], index=order, columns=order)
    frame.to_csv(tmp_path / "rel.csv")
    from cft.prior.files import read_relation

    assert np.array_equal(read_relation(tmp_path / "rel.csv", BUILTIN_TASKS), matrix)


# ------------------------------------------------------------------ bundles


BUNDLE_CASES = [
    "corrupt_header", "empty", "extra_tensor", "fingerprint", "format_kind", "format_version", "garbage", "metadata_bad_value", "metadata_data_config",
    "metadata_huge_adapters", "metadata_more_tasks", "metadata_not_json", "metadata_rank", "metadata_wrong_type",
    "missing_tensor", "nan_tensor", "not_cft", "text", "truncated", "truncated_header", "wrong_dtype", "wrong_shape",
]


@pytest.fixture(scope="module")
def broken_bundles(tiny_run, tmp_path_factory):
    folder = tmp_path_factory.mktemp("bundles")
    shutil.copyfile(tiny_run / "backbone.safetensors", folder / "backbone.safetensors")
    cases = bad_bundles(tiny_run / "bundle.safetensors", folder)
    assert sorted(cases) == sorted(BUNDLE_CASES), "keep BUNDLE_CASES (and docs/reliability.md) in step with bad_bundles()"
    return cases


@pytest.mark.parametrize("case", BUNDLE_CASES)
def test_bad_bundle_is_refused_by_eval(broken_bundles, tmp_path, case):
    bad = broken_bundles[case]
    before = snapshot(bad.path.parent)
    assert_user_error(cli("eval", bad.path, "--json", tmp_path / "out.json"), bad.expected)
    assert not (tmp_path / "out.json").exists()
    assert_unchanged(before, bad.path.parent)


def test_bundle_fingerprint_mismatch_with_an_explicit_backbone(tiny_run, tmp_path):
    import torch

    from cft.files.backbone import save_backbone
    from cft.nn.backbone import Backbone
    from cft.spec import BackboneSpec

    torch.manual_seed(7)
    other = tmp_path / "other.safetensors"
    save_backbone(Backbone(BackboneSpec(num_layers=2, hidden=32, dropout=0.0)), other)
    assert_user_error(cli("eval", tiny_run, "--backbone", other), "is not the one bundle", "fingerprint")
    lone = tmp_path / "lone"
    lone.mkdir()
    shutil.copyfile(tiny_run / "bundle.safetensors", lone / "bundle.safetensors")
    shutil.copyfile(other, lone / "backbone.safetensors")
    assert_user_error(cli("eval", lone), "needs backbone", "--backbone")


def test_bad_init_bundle_in_a_recipe_is_refused(broken_bundles, tmp_path):
    bad = broken_bundles["truncated"]
    recipe = _recipe(tmp_path, train={"init_bundle": str(bad.path), "trainable": "routing"})
    _train_refused(recipe, tmp_path / "run", bad.expected)


def test_eval_of_an_unfinished_run_or_missing_bundle(tmp_path):
    (tmp_path / "run").mkdir()
    assert_user_error(cli("eval", tmp_path / "run"), "has no bundle.safetensors", "--resume")
    assert_user_error(cli("eval", tmp_path / "absent.safetensors"), "does not exist")
    assert_user_error(cli("eval", tmp_path / "run", "--split", "training"), "choose train, valid or test")


# ------------------------------------------------------------------ backbones


@pytest.mark.parametrize("case", ["a_bundle", "config_absurd", "config_shapes", "format_version", "nan", "tampered", "truncated"])
def test_bad_backbone_file_is_refused_before_anything_is_written(tiny_run, tmp_path, case):
    bad = bad_backbones(tiny_run / "backbone.safetensors", tiny_run / "bundle.safetensors", tmp_path / "bb")[case]
    recipe = _recipe(tmp_path, backbone={**TINY["backbone"], "path": str(bad.path)})
    _train_refused(recipe, tmp_path / "run", bad.expected)


def test_backbone_file_must_match_the_recipes_architecture(tiny_run, tmp_path):
    recipe = _recipe(tmp_path, backbone={**TINY["backbone"], "num_layers": 3, "path": str(tiny_run / "backbone.safetensors")})
    _train_refused(recipe, tmp_path / "run", "is not the backbone the recipe describes", "num_layers: 2 in the file, 3 in the recipe")


# ------------------------------------------------------------------ output folders


def test_output_path_that_is_a_file(tmp_path):
    recipe = _recipe(tmp_path)
    target = tmp_path / "notes.txt"
    target.write_text("mine")
    assert_user_error(cli("train", recipe, "-o", target), "is a file, not a folder")
    assert_user_error(cli("train", recipe, "-o", target / "run"), "Cannot create output folder", "Not a directory")
    assert target.read_text() == "mine"


def test_unwritable_output_folder(tmp_path, unwritable_parent):
    recipe = _recipe(tmp_path)
    assert_user_error(cli("train", recipe, "-o", unwritable_parent / "cft-run"), "Cannot create output folder", "Choose a folder you can write to")
    assert not (unwritable_parent / "cft-run").exists()


def test_unwritable_eval_json(tiny_run, tmp_path, unwritable_parent):
    assert_user_error(cli("eval", tiny_run, "--json", unwritable_parent / "out.json"), "Cannot write")
    (tmp_path / "a-folder.json").mkdir()
    assert_user_error(cli("eval", tiny_run, "--json", tmp_path / "a-folder.json"), "Cannot write")


def test_failed_overwrite_keeps_the_old_run(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    before = snapshot(run)
    bad = _recipe(tmp_path, prior={"source": "file", "path": str(tmp_path / "absent.npy")})
    assert_user_error(cli("train", bad, "-o", run, "--overwrite"), "does not exist")
    assert_unchanged(before, run)


def test_failure_after_the_folder_was_created_leaves_nothing(tmp_path, monkeypatch):
    """A failure in the part of setup that writes (here: pretraining data that does not exist) removes
    what the new run wrote, and the folder it created."""
    recipe = _recipe(tmp_path, backbone={**TINY["backbone"], "pretrain": {"data": {"source": "csv", "path": str(tmp_path / "absent.csv")}}})
    _train_refused(recipe, tmp_path / "run", "does not exist")


# ------------------------------------------------------------------ real processes


def test_a_real_process_exits_2_without_traceback(tmp_path):
    """The in-process runner above shares the CLI's code path; this is the same through a real
    process (tests/test_data.py::test_csv_errors_through_the_cli does it for a data error, after
    torch and the data stack are loaded)."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("routing:\n  temperature: -1\n")
    result = run_cli("train", bad, "-o", tmp_path / "run")
    assert_user_error(result, "routing.temperature (line 2): must be > 0")
    assert not (tmp_path / "run").exists()


def test_user_text_in_messages_is_printed_verbatim(tmp_path):
    """Paths, names and values are user data: text that looks like rich markup is not markup
    (a closing tag like [/bold] used to crash the error printer itself)."""
    csv = labelled_csv(tmp_path / "[red]d[red].csv", 30)
    recipe = _recipe(tmp_path, data={"source": "csv", "path": str(csv), "smiles_column": "[/bold]"})
    result = cli("train", recipe, "-o", tmp_path / "run")
    assert_user_error(result, "[red]d[red].csv has no SMILES column '[/bold]'")
