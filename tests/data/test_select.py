"""Column choice: the one task-glob selection and the one SMILES-column rule, used by every source and by predict."""

from __future__ import annotations

from pathlib import Path

import pytest

from cft.data.dataset import load_dataset
from cft.data.select import pick_smiles_column, select
from cft.errors import CftError
from cft.recipe.schema import DataConfig

NAMES = ["NR-AR", "NR-AhR", "SR-ARE", "SR-p53", "id"]


def test_select_follows_the_patterns_order_without_repeats():
    assert select(NAMES, ["SR-*", "NR-A?"]) == [2, 3, 0]
    assert select(NAMES, ["NR-*", "NR-AR"]) == [0, 1]
    assert select(NAMES, ["nr-*"]) == [], "globs are case-sensitive"


def test_select_names_a_pattern_that_matches_nothing():
    with pytest.raises(CftError, match=r"d.csv: data.tasks entry 'XX-\*' matches no column; columns are: NR-AR, NR-AhR"):
        select(NAMES, ["NR-*", "XX-*"], source="d.csv")
    assert select(NAMES, ["XX-*"]) == [], "exclusions ignore unmatched patterns"


def test_builtin_and_csv_sources_select_alike(tmp_path):
    builtin = load_dataset(DataConfig(source="builtin", tasks=["has_Cl", "has_B*"], limit=300), Path("."))
    assert builtin.tasks == ["has_Cl", "has_Br"]
    with pytest.raises(CftError, match="the builtin dataset: data.tasks entry 'nope' matches no column"):
        load_dataset(DataConfig(source="builtin", tasks=["has_Cl", "nope"], limit=300), Path("."))
    csv = tmp_path / "d.csv"
    csv.write_text("smiles,b,a,id\n" + "".join(f"{s},{i % 2},{(i + 1) % 2},{i}\n" for i, s in enumerate(["CCO", "CCN", "CCC", "CCCl", "c1ccccc1"] * 8)))
    data = load_dataset(DataConfig(source="csv", path=str(csv), tasks=["a", "b"], split={"method": "random"}), tmp_path)
    assert data.tasks == ["a", "b"]
    data = load_dataset(DataConfig(source="csv", path=str(csv), exclude_columns=["i?"], split={"method": "random"}), tmp_path)
    assert data.tasks == ["b", "a"]


@pytest.mark.parametrize(
    ("columns", "requested", "expected"),
    [
        (["id", "SMILES", "y"], None, "SMILES"),  # a column named like smiles, any case
        (["id", "Canonical_Smiles", "y"], None, "Canonical_Smiles"),
        (["mol", "Class"], None, "mol"),  # bace.csv
        (["structure", "y"], None, "structure"),  # none named like smiles: the first column
        (["smiles", "structure"], "structure", "structure"),  # explicit wins
    ],
)
def test_smiles_column_rule(columns, requested, expected):
    assert pick_smiles_column(columns, requested, "d.csv") == expected


def test_smiles_column_named_but_absent_is_refused_with_the_option():
    with pytest.raises(CftError, match="d.csv has no SMILES column 'smi'; its columns are: id, y") as info:
        pick_smiles_column(["id", "y"], "smi", "d.csv", option="--smiles-column")
    assert "--smiles-column" in info.value.render()


def test_training_finds_a_smiles_column_that_is_not_first(tmp_path):
    csv = tmp_path / "d.csv"
    csv.write_text("id,SMILES,y\n" + "".join(f"m{i},{s},{i % 2}\n" for i, s in enumerate(["CCO", "CCN", "CCC", "CCCl", "c1ccccc1"] * 8)))
    data = load_dataset(DataConfig(source="csv", path=str(csv), exclude_columns=["id"], split={"method": "random"}), tmp_path)
    assert data.tasks == ["y"] and data.smiles[0] == "CCO"
