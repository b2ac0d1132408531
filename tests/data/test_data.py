"""Data sources on real data: builtin, tox21/toxcast CSVs, an OGB folder; and their errors."""

from __future__ import annotations

import gzip
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_user_error, run_cli, run_cli_inprocess

from cft.data.dataset import load_dataset
from cft.errors import CftError
from cft.prior.relation import relation_from_labels
from cft.recipe.schema import DataConfig, SplitConfig


def _csv(tmp_path: Path, text: str, name: str = "d.csv") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# ------------------------------------------------------------------ builtin


def test_builtin_dataset_is_offline_deterministic_and_structured():
    a = load_dataset(DataConfig(source="builtin"), Path("."))
    b = load_dataset(DataConfig(source="builtin"), Path("."))
    assert len(a.tasks) >= 24 and len(a) > 4900
    assert set(a.kinds) == {"binary"}
    for name in ("train", "valid", "test"):
        assert np.array_equal(a.split[name], b.split[name])
    assert not set(a.split["train"]) & set(a.split["test"])
    rate = np.nanmean(a.y.numpy(), axis=0)
    assert (rate < 0.02).sum() >= 3, "some tasks are rare"
    rel = relation_from_labels(a.labels("train"), "phi", min_support=20)
    t = {name: i for i, name in enumerate(a.tasks)}
    # families are visibly correlated; unrelated tasks much less
    assert rel[t["halogen_any"], t["has_Cl"]] > 0.5
    assert rel[t["tpsa_gt_75"], t["hba_gt_5"]] > 0.4
    assert rel[t["has_Br"], t["carboxylic_acid"]] < 0.1


# ------------------------------------------------------------------ CSVs


def test_tox21_loads_with_scaffold_split_and_skips_invalid(data_root):
    cfg = DataConfig(source="csv", path="tox21.csv")
    data = load_dataset(cfg, data_root)
    assert len(data.tasks) == 12 and data.tasks[0] == "NR-AR" and data.tasks[-1] == "SR-p53"
    assert len(data.skipped) == 8 and len(data) == 7831 - 8
    assert all(row >= 0 for row, _ in data.skipped)
    sizes = {k: len(v) for k, v in data.split.items()}
    assert sum(sizes.values()) == len(data)
    assert sizes["train"] == pytest.approx(0.8 * len(data), abs=2)
    train, valid, test = (set(data.split[k]) for k in ("train", "valid", "test"))
    assert not (train & valid or train & test or valid & test)
    again = load_dataset(cfg, data_root)
    assert all(np.array_equal(data.split[k], again.split[k]) for k in data.split)
    assert again.cache_hit, "second load reads the featurisation cache"
    # scaffold split: no scaffold appears in two splits
    from cft.data.split import scaffold_of

    train_scaffolds = {scaffold_of(data.smiles[i]) for i in data.split["train"]}
    assert not train_scaffolds & {scaffold_of(data.smiles[i]) for i in data.split["test"]}


def test_balanced_scaffold_split_is_another_scaffold_split_per_seed(data_root):
    """`scaffold_balanced`: every seed keeps each scaffold in one split, with the fractions' sizes;
    seeds give different splits, a seed gives the same one, and the large groups land in train."""
    from collections import Counter

    from cft.data.split import balanced_scaffold_split, scaffold_of

    def load(seed: int | None, recipe_seed: int = 0):
        return load_dataset(DataConfig(source="csv", path="tox21.csv", split=SplitConfig(method="scaffold_balanced", seed=seed)), data_root, recipe_seed)

    data = load(None)
    n = len(data)
    scaffold = [scaffold_of(s) for s in data.smiles]
    part_of = {}
    for name, indices in data.split.items():
        for i in indices:
            assert part_of.setdefault(scaffold[i], name) == name, f"scaffold {scaffold[i]} is in {part_of[scaffold[i]]} and {name}"
    sizes = {k: len(v) for k, v in data.split.items()}
    assert sum(sizes.values()) == n
    assert 0.8 * n - 10 <= sizes["train"] <= 0.8 * n and 0.1 * n - 10 <= sizes["valid"] <= 0.1 * n
    group_size = Counter(scaffold)
    big = {s for s, c in group_size.items() if c > 0.1 * n / 2}
    assert big and all(part_of[s] == "train" for s in big), "groups larger than half the valid/test size go to train"
    again = load(None)
    assert all(np.array_equal(data.split[k], again.split[k]) for k in data.split)
    other = load(None, recipe_seed=1)
    assert not np.array_equal(data.split["test"], other.split["test"]), "the recipe seed draws another split"
    assert np.array_equal(load(1).split["test"], other.split["test"]), "data.split.seed draws it too"
    deterministic = load_dataset(DataConfig(source="csv", path="tox21.csv", split=SplitConfig(method="scaffold")), data_root)
    assert not np.array_equal(data.split["test"], deterministic.split["test"])
    # no test share: what fits nowhere goes to valid, and the empty test split is refused as for every method
    no_test = balanced_scaffold_split(data.smiles, (0.9, 0.1, 0.0), 0)
    assert len(no_test["test"]) == 0 and len(no_test["train"]) + len(no_test["valid"]) == n
    with pytest.raises(CftError, match="leaves test empty"):
        load_dataset(DataConfig(source="csv", path="tox21.csv", split=SplitConfig(method="scaffold_balanced", fractions=(0.9, 0.1, 0.0))), data_root)


def test_toxcast_loads_617_tasks(data_root):
    data = load_dataset(DataConfig(source="csv", path="toxcast.csv.gz"), data_root)
    assert len(data.tasks) == 617 and len(data) == 8576 - len(data.skipped)
    assert np.isnan(data.y.numpy()).mean() > 0.5, "very sparse labels"


def test_task_selection_by_glob_and_random_split(data_root):
    cfg = DataConfig(source="csv", path="tox21.csv", tasks=["NR-*"], split=SplitConfig(method="random", seed=3))
    data = load_dataset(cfg, data_root)
    assert data.tasks == ["NR-AR", "NR-AR-LBD", "NR-AhR", "NR-Aromatase", "NR-ER", "NR-ER-LBD", "NR-PPAR-gamma"]
    again = load_dataset(cfg, data_root)
    assert np.array_equal(data.split["test"], again.split["test"])


def test_split_column_and_regression_inference(tmp_path):
    rows = ["smiles,logS,active,split"] + [f"{s},{v},{a},{sp}" for s, v, a, sp in [
        ("CCO", 0.5, 1, "train"), ("CCN", -1.2, 0, "train"), ("c1ccccc1", 2.0, 1, "train"), ("CCCl", 0.1, 0, "valid"), ("CCBr", 1.1, 1, "test"),
    ]]
    path = _csv(tmp_path, "\n".join(rows) + "\n")
    data = load_dataset(DataConfig(source="csv", path=str(path), tasks=["logS"], split=SplitConfig(method="column", column="split")), tmp_path)
    assert data.kinds == ["regression"] and data.metric == "rmse"
    assert [len(data.split[k]) for k in ("train", "valid", "test")] == [3, 1, 1]


def test_strict_mode_lists_unparseable_rows(data_root):
    with pytest.raises(CftError, match="8 SMILES cannot be parsed") as info:
        load_dataset(DataConfig(source="csv", path="tox21.csv", strict=True), data_root)
    assert "row " in str(info.value)


CSV_ERRORS = {
    "missing file": (None, "does not exist"),
    "empty file": ("", "is empty"),
    "header only": ("smiles,a\n", "has a header but no data rows"),
    "no smiles column": ("mol,a\nCCO,1\n", "has no SMILES column 'smiles'"),
    "non numeric label": ("smiles,a\nCCO,1\nCCN,yes\n", "column 'a', row 3: label 'yes' is not a number"),
    "all missing task": ("smiles,a,b\nCCO,1,\nCCN,0,\n", "1 task column(s) have no label in any row: b (data.strict: true refuses them)"),
    "repeated header": ("smiles,t1,t2,t1\nCCO,1,0,1\nCCN,0,1,0\n", "the header repeats 1 column name(s): 't1' in columns 2, 4"),
}


@pytest.mark.parametrize("case", sorted(CSV_ERRORS))
def test_csv_errors_are_clear(tmp_path, case):
    text, expected = CSV_ERRORS[case]
    path = tmp_path / "bad.csv"
    if text is not None:
        path.write_text(text)
    smiles = "smiles" if case == "no smiles column" else None
    with pytest.raises(CftError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        load_dataset(DataConfig(source="csv", path=str(path), smiles_column=smiles, strict=case == "all missing task"), tmp_path)


def test_csv_errors_through_the_cli(tmp_path):
    bad = _csv(tmp_path, "smiles,a\nCCO,1\nCCN,maybe\n")
    recipe = _csv(tmp_path, f"data:\n  source: csv\n  path: {bad}\n", "r.yaml")
    assert_user_error(run_cli("train", recipe, "-o", tmp_path / "run"), "row 3", "'maybe' is not a number")
    assert not (tmp_path / "run" / "bundle.safetensors").exists()


def test_task_without_training_labels_is_refused(tmp_path):
    rows = ["smiles,a,b,split", "CCO,1,,train", "CCN,0,,train", "CCC,1,1,valid", "CCCl,0,0,test"]
    path = _csv(tmp_path, "\n".join(rows) + "\n")
    cfg = DataConfig(source="csv", path=str(path), split=SplitConfig(method="column", column="split"))
    with pytest.raises(CftError, match=r"b have no labels in the training split \(data.strict: true refuses them\)"):
        load_dataset(cfg.model_copy(update={"strict": True}), tmp_path)
    data = load_dataset(cfg, tmp_path)  # without strict: left out, with its reason
    assert data.tasks == ["a"] and data.dropped_tasks == {"b": "no label in the training split"}


def test_split_that_leaves_test_empty_is_refused(tmp_path):
    path = _csv(tmp_path, "smiles,a\n" + "".join(f"{'C' * (i + 1)}O,{i % 2}\n" for i in range(10)))
    with pytest.raises(CftError, match="leaves test empty"):
        load_dataset(DataConfig(source="csv", path=str(path), split=SplitConfig(method="random", fractions=(0.9, 0.1, 0.0))), tmp_path)


def test_gzipped_csv_is_read(tmp_path):
    path = tmp_path / "g.csv.gz"
    with gzip.open(path, "wt") as fh:
        fh.write("smiles,a\n" + "".join(f"{'C' * (i % 7 + 1)}O,{i % 2}\n" for i in range(40)))
    data = load_dataset(DataConfig(source="csv", path=str(path), split=SplitConfig(method="random")), tmp_path)
    assert len(data) == 40


# ------------------------------------------------------------------ OGB layout


@pytest.fixture(scope="module")
def ogb_root(tmp_path_factory, data_root):
    from ogb_layout import write_ogb_folder

    root = tmp_path_factory.mktemp("ogb")
    write_ogb_folder(data_root / "tox21.csv", root, limit=1500)
    return root


def test_ogb_folder_loads_through_ogb_offline(ogb_root):
    data = load_dataset(DataConfig(source="ogb", name="ogbg-moltox21"), ogb_root)
    assert len(data.tasks) == 12 and data.metric == "rocauc"
    import pandas as pd

    assert len(data) == len(pd.read_csv(ogb_root / "ogbg_moltox21" / "mapping" / "mol.csv.gz"))
    assert (ogb_root / "ogbg_moltox21" / "processed" / "geometric_data_processed.pt").exists()
    start = time.perf_counter()
    again = load_dataset(DataConfig(source="ogb", name="ogbg-moltox21"), ogb_root)
    assert time.perf_counter() - start < 5 and len(again) == len(data)
    # same molecules as featurising the CSV ourselves
    from ogb.utils import smiles2graph

    g = smiles2graph(data.smiles[0])
    assert data.store.graph(0).x.tolist() == g["node_feat"].tolist()


def test_ogb_folder_with_missing_files_is_refused(ogb_root, tmp_path):
    import shutil

    broken = tmp_path / "root"
    shutil.copytree(ogb_root, broken)
    (broken / "ogbg_moltox21" / "RELEASE_v1.txt").unlink()
    shutil.rmtree(broken / "ogbg_moltox21" / "processed")
    (broken / "ogbg_moltox21" / "raw" / "edge.csv.gz").unlink()
    with pytest.raises(CftError, match="incomplete: missing RELEASE_v1.txt, raw/edge.csv.gz"):
        load_dataset(DataConfig(source="ogb", name="ogbg-moltox21"), broken)


def test_absent_ogb_folder_and_failed_download_says_what_to_do(tmp_path, monkeypatch):
    import ogb.graphproppred.dataset_pyg as dataset_pyg

    def no_network(*_a, **_k):
        raise OSError("network unreachable")

    monkeypatch.setattr(dataset_pyg, "download_url", no_network)
    monkeypatch.setattr(dataset_pyg, "decide_download", lambda url: True)
    with pytest.raises(CftError, match="downloading it failed") as info:
        load_dataset(DataConfig(source="ogb", name="ogbg-molbace"), tmp_path)
    assert "ogbg_molbace" in str(info.value)
    assert not (tmp_path / "ogbg_molbace").exists(), "no half-made folder is left behind"


def test_ogb_recipe_through_the_cli(ogb_root, tmp_path):
    recipe = _csv(tmp_path, "data:\n  source: ogb\n  name: ogbg-moltox21\n  limit: 300\n  split:\n    method: random\nbackbone:\n  num_layers: 1\n  hidden: 16\ntrain:\n  epochs: 1\n", "r.yaml")
    result = run_cli("train", recipe, "--data-root", ogb_root, "-o", tmp_path / "run")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "run" / "summary.json").exists()


def test_ogb_random_split_follows_the_recipe_seed(ogb_root):
    """`data.split.seed` defaults to the recipe's seed for OGB data too (it was fixed at 0)."""
    cfg = DataConfig(source="ogb", name="ogbg-moltox21", split={"method": "random"})
    seed0, seed1 = (load_dataset(cfg, ogb_root, seed).split["train"] for seed in (0, 1))
    assert not np.array_equal(seed0, seed1), "the recipe seed changes the random split"
    again = load_dataset(cfg, ogb_root, 1).split["train"]
    assert np.array_equal(seed1, again)
    pinned = DataConfig(source="ogb", name="ogbg-moltox21", split={"method": "random", "seed": 0})
    assert np.array_equal(load_dataset(pinned, ogb_root, 1).split["train"], seed0), "an explicit split.seed wins"


# ------------------------------------------------------------------ wide, sparse, badly headed CSVs

WIDE_RECIPE = """
seed: 0
data:
  source: csv
  path: {path}
  split:
    method: random
backbone:
  num_layers: 1
  hidden: 16
adapters:
  num_adapters: 2
  rank: 2
train:
  epochs: 1
  batch_size: 64
eval:
  metric: rocauc
"""


def _wide_sparse_csv(data_root: Path, out: Path, rows: int = 300, added: int = 20) -> tuple[Path, list[str]]:
    """The first `rows` molecules of ToxCast (617 sparse assay columns) with `added` empty columns
    spread among them: 637 task columns, of which every one without a label is returned."""
    import pandas as pd

    frame = pd.read_csv(data_root / "toxcast.csv.gz", dtype=str, keep_default_na=False).iloc[:rows]
    for k in range(added):
        frame.insert(1 + 31 * k, f"EMPTY_{k:02d}", "")
    empty = [c for c in frame.columns[1:] if (frame[c].str.strip() == "").all()]
    frame.to_csv(out, index=False)
    return out, empty


def test_wide_sparse_csv_drops_empty_tasks_and_reports_unscored(data_root, tmp_path):
    csv, empty = _wide_sparse_csv(data_root, tmp_path / "wide.csv")
    header = csv.read_text().splitlines()[0].split(",")
    assert len(header) - 1 == 637 and len(empty) > 20, "ToxCast's first rows leave more columns empty than the ones added"
    recipe = _csv(tmp_path, WIDE_RECIPE.format(path=csv), "r.yaml")
    result = run_cli("train", recipe, "-o", tmp_path / "run")
    assert result.returncode == 0, result.stderr
    import json

    dropped = json.loads((tmp_path / "run" / "dropped_tasks.json").read_text())
    assert [t for t, why in dropped["reasons"].items() if why == "no label in any row of the input"] == empty
    untrained = [t for t, why in dropped["reasons"].items() if why == "no label in the training split"]
    assert untrained, "a random split of 300 molecules leaves some sparse assays without a training label"
    assert dropped["count"] == len(dropped["tasks"]) == len(empty) + len(untrained)
    assert result.stderr.count("task column(s) (") == 1, "one warning"
    assert (f"left out {dropped['count']} task column(s) ({len(empty)} with no label in any row of the input; "
            f"{len(untrained)} with no label in the training split)") in result.stderr, result.stderr
    assert "dropped_tasks.json" in result.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["dropped_tasks"] == dropped["count"]
    assert len(summary["tasks"]) == 637 - dropped["count"] and not set(dropped["tasks"]) & set(summary["tasks"])
    # with 30 test molecules many sparse assays hold one class only: named, with the reason, never silently
    unscored = summary["unscored"]
    assert unscored and set(unscored) <= set(summary["tasks"])
    for task, why in unscored.items():
        assert summary["valid"]["per_task"][task] is None or summary["test"]["per_task"][task] is None, task
        assert any(part in why for part in ("only positive (1) labels", "only negative (0) labels", "no labelled molecule")), why
    scored_out = {t for t in summary["tasks"] if summary["test"]["per_task"][t] is None or summary["valid"]["per_task"][t] is None}
    assert scored_out == set(unscored), "every task left out of a mean is in unscored, and only those"
    assert f"{len(unscored)} task(s) cannot be scored by rocauc" in result.stderr
    # data.strict: true refuses instead, naming the count, and writes nothing
    refused = run_cli("train", recipe, "-o", tmp_path / "strict", "--set", "data.strict=true")
    assert_user_error(refused, f"{len(empty)} task column(s) have no label in any row: {empty[0]}", "data.strict: false")
    assert not (tmp_path / "strict").exists()


def test_repeated_header_is_refused_through_the_cli(tmp_path):
    body = "".join(f"{s},{i % 2},{(i + 1) % 2},{i % 2}\n" for i, s in enumerate(["CCO", "CCN", "CCC", "CCCl", "c1ccccc1"] * 8))
    csv = _csv(tmp_path, "smiles,t1,t2,t1\n" + body)
    recipe = _csv(tmp_path, WIDE_RECIPE.format(path=csv), "r.yaml")
    result = run_cli("train", recipe, "-o", tmp_path / "run")
    assert_user_error(result, "the header repeats 1 column name(s): 't1' in columns 2, 4", "Rename the repeated columns")
    assert "t1.1" in result.stderr, "the message says what pandas would have done"
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------ splits in chemprop's format, both ways


def _split_csv(tmp_path: Path) -> Path:
    """120 labelled molecules with two unparsable SMILES among them (rows 5 and 50)."""
    from reliability_kit import molecules

    smiles = molecules(120)
    smiles[5], smiles[50] = "C1CC", "not_a_molecule"
    rows = ["id,smiles,has_N,has_O"] + [f"m{i},{s},{int('N' in s)},{int('O' in s)}" for i, s in enumerate(smiles)]
    return _csv(tmp_path, "\n".join(rows) + "\n")


def test_splits_round_trip_through_chemprop_format(tmp_path):
    import json

    import pandas as pd

    csv = _split_csv(tmp_path)
    recipe = _csv(tmp_path, WIDE_RECIPE.format(path=csv).replace("method: random", "method: random\n    seed: 3"), "r.yaml")
    first = run_cli("train", recipe, "-o", tmp_path / "a", "--set", "data.exclude_columns=[id]")
    assert first.returncode == 0, first.stderr
    splits = json.loads((tmp_path / "a" / "splits.json").read_text())
    assert isinstance(splits, list) and len(splits) == 1 and set(splits[0]) == {"train", "val", "test"}
    parts = splits[0]
    every = parts["train"] + parts["val"] + parts["test"]
    assert sorted(every) == [i for i in range(120) if i not in (5, 50)], "input rows, each once; unparsable rows in no split"
    assert len(parts["train"]) == 94 and all(isinstance(i, int) for i in every)
    # the split column: one line per input row, in input order, chemprop's values
    column = pd.read_csv(tmp_path / "a" / "split.csv", keep_default_na=False)
    assert column["row"].tolist() == list(range(120))
    assert column["smiles"].tolist() == pd.read_csv(csv)["smiles"].tolist()
    assert column["split"].iloc[5] == "" and column["split"].iloc[50] == ""
    assert sorted(column.index[column["split"] == "val"]) == sorted(parts["val"])
    # a second run reads the file (chemprop's --splits-file format) and trains on the identical split
    second = run_cli("train", recipe, "-o", tmp_path / "b", "--set", "data.exclude_columns=[id]",
                     "--set", "data.split.method=file", "--set", f"data.split.path={tmp_path / 'a' / 'splits.json'}")
    assert second.returncode == 0, second.stderr
    assert json.loads((tmp_path / "b" / "splits.json").read_text()) == splits
    assert (tmp_path / "b" / "split.csv").read_text() == (tmp_path / "a" / "split.csv").read_text()
    # the split column read back by cft's own column split gives the same split too
    data = pd.read_csv(csv)
    data["split"] = column["split"].replace("", "test")  # cft needs a value on every row; unparsable rows are skipped anyway
    data.to_csv(tmp_path / "with_split.csv", index=False)
    cfg = DataConfig(source="csv", path=str(tmp_path / "with_split.csv"), exclude_columns=["id"], split=SplitConfig(method="column", column="split"))
    loaded = load_dataset(cfg, tmp_path)
    assert loaded.chemprop_splits() == splits


def test_chemprop_ranges_and_a_bare_object_are_read(tmp_path):
    import json

    csv = _split_csv(tmp_path)
    (tmp_path / "s.json").write_text(json.dumps({"train": "0-79", "val": "80-99", "test": list(range(100, 120))}))
    cfg = DataConfig(source="csv", path=str(csv), exclude_columns=["id"], split=SplitConfig(method="file", path="s.json"))
    data = load_dataset(cfg, tmp_path)  # a relative split path is read from the data root
    assert data.chemprop_splits() == [{"train": [i for i in range(80) if i != 5 and i != 50], "val": list(range(80, 100)), "test": list(range(100, 120))}]


SPLIT_FILE_ERRORS = {
    "missing key": ([{"train": [0, 1], "test": [2]}], "key 'val' is missing"),
    "out of range": ([{"train": [0, 1, 120], "val": [3], "test": [4]}], "key 'train': row index 120 is outside the input's 120 data rows"),
    "overlap": ([{"train": [0, 1, 2], "val": [2], "test": [4]}], "row 2 is in both 'train' and 'val'"),
    "several folds": ([{"train": [0], "val": [1], "test": [2]}] * 2, "holds 2 splits (folds)"),
    "not indices": ([{"train": [0.5], "val": [1], "test": [2]}], "key 'train': expected a list of row indices"),
    "not json": ("[{", "is not readable JSON"),
}


@pytest.mark.parametrize("case", sorted(SPLIT_FILE_ERRORS))
def test_bad_split_file_is_refused_naming_file_and_key(tmp_path, case):
    import json

    content, expected = SPLIT_FILE_ERRORS[case]
    split_file = tmp_path / "splits.json"
    split_file.write_text(content if isinstance(content, str) else json.dumps(content))
    csv = _split_csv(tmp_path)
    recipe = _csv(tmp_path, WIDE_RECIPE.format(path=csv), "r.yaml")
    result = run_cli_inprocess("train", recipe, "-o", tmp_path / "run", "--set", "data.exclude_columns=[id]",
                               "--set", "data.split.method=file", "--set", f"data.split.path={split_file}")
    assert_user_error(result, str(split_file), expected)
    assert not (tmp_path / "run").exists()


def test_split_method_file_needs_a_path(tmp_path):
    recipe = _csv(tmp_path, WIDE_RECIPE.format(path="x.csv"), "r.yaml")
    assert_user_error(run_cli_inprocess("recipes", "validate", recipe, "--set", "data.split.method=file"), "data.split.path", "required when split.method is file")


def test_bad_split_value_names_the_input_row_after_skipped_smiles(tmp_path):
    rows = ["smiles,a,split", "not_a_molecule,1,train", "CCO,1,train", "CCN,0,valid", "CCC,1,tst"]
    path = _csv(tmp_path, "\n".join(rows) + "\n")
    with pytest.raises(CftError, match=r"column 'split', row 5: split value 'tst'"):
        load_dataset(DataConfig(source="csv", path=str(path), split=SplitConfig(method="column", column="split")), tmp_path)
