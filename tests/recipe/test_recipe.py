"""Recipes: shipped ones validate; broken ones fail with field path, line, exit 2, no traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import REPO, assert_user_error, run_cli

from cft.errors import CftError
from cft.recipe.load import load_recipe, parse_yaml_text, validate_raw

SHIPPED = sorted((REPO / "recipes").glob("*.yaml"))


def test_shipped_recipes_exist():
    names = {p.name for p in SHIPPED}
    assert {"quickstart.yaml", "molpcba.yaml", "tox21.yaml", "toxcast.yaml", "muv.yaml"} <= names


def test_every_shipped_recipe_validates_through_the_cli():
    result = run_cli("recipes", "validate", *SHIPPED)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("ok ") == len(SHIPPED)


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_recipes_have_description_and_command(path: Path):
    text = path.read_text()
    assert text.startswith("#"), "header comment"
    assert "cft train recipes/" + path.name in text, "header gives the command that runs it"
    assert load_recipe(path).description


BROKEN = {
    "negative temperature": ("routing:\n  temperature: -1\n", "routing.temperature (line 2): must be > 0, got -1"),
    "threshold at one": ("routing:\n  threshold: 1.0\n", "routing.threshold (line 2): must be < 1, got 1.0"),
    "rank zero": ("adapters:\n  rank: 0\n", "adapters.rank (line 2): must be >= 1, got 0"),
    "no adapters": ("adapters:\n  num_adapters: 0\n", "adapters.num_adapters (line 2): must be >= 1, got 0"),
    "unknown top-level key": ("epochz: 3\n", "epochz (line 1): unknown field"),
    "unknown nested key": ("train:\n  epohcs: 3\n", "train.epohcs (line 2): unknown field (did you mean `epochs`?)"),
    "wrong type": ("train:\n  epochs: many\n", "train.epochs (line 2): must be an integer, got 'many'"),
    "bad literal": ("data:\n  source: parquet\n", "data.source (line 2): must be one of"),
    "csv without path": ("data:\n  source: csv\n", "data.path (line 1): required when source is csv"),
    "layer out of range": ("backbone:\n  num_layers: 2\nadapters:\n  layers: [0, 5]\n", "adapters.layers (line 4): layer indices must be < backbone.num_layers (2)"),
    "mlp placement on gcn": ("backbone:\n  arch: gcn\nadapters:\n  placement: mlp\n", "adapters.placement (line 4): `mlp` places the adapters in a GIN MLP"),
    "mlp-out placement on gcn": ("backbone:\n  arch: gcn\nadapters:\n  placement: mlp-out\n", "adapters.placement (line 4): `mlp-out` places the adapters in a GIN MLP"),
    "mlp-both placement on gcn": ("backbone:\n  arch: gcn\nadapters:\n  placement: mlp-both\n", "adapters.placement (line 4): `mlp-both` places the adapters in a GIN MLP"),
    "virtual-node adapters at the output": ("adapters:\n  virtual_node: true\n", "adapters.virtual_node (line 2): adapts the virtual node's MLP beside `placement: mlp-both` only"),
    "virtual-node adapters without a virtual node": ("backbone:\n  virtual_node: false\nadapters:\n  placement: mlp-both\n  virtual_node: true\n",
                                                     "adapters.virtual_node (line 5): the backbone has no virtual node"),
    "virtual-node rank without virtual-node banks": ("adapters:\n  placement: mlp-both\n  virtual_node_rank: 6\n",
                                                     "adapters.virtual_node_rank (line 3): is the rank of the virtual node's banks, which adapters.virtual_node: false leaves out"),
    "embeddings' rank without the embeddings' bank": ("adapters:\n  embeddings_rank: 36\n",
                                                       "adapters.embeddings_rank (line 2): is the rank of the embeddings' bank, which adapters.embeddings: false leaves out"),
    "embeddings' rank above the encoder's rank": ("adapters:\n  embeddings: true\n  embeddings_rank: 175\n",
                                                 "adapters.embeddings_rank (line 3): must be <= 174: the bank updates a map from the atoms' 174 feature values"),
    "embedding adapters without layer 0": ("adapters:\n  layers: [1, 2]\n  embeddings: true\n",
                                           "adapters.embeddings (line 3): the embeddings' bank acts under layer 0's weights; add 0 to adapters.layers"),
    "embedding adapters at layer 0 alone, task read-out": ("adapters:\n  layers: [0]\n  embeddings: true\n",
                                                           "adapters.embeddings (line 3): under routing.readout: task layer 0 would hold the experts"),
    "negative route entropy": ("train:\n  route_entropy: -0.1\n", "train.route_entropy (line 2): must be >= 0, got -0.1"),
    "negative route balance": ("train:\n  route_balance: -1\n", "train.route_balance (line 2): must be >= 0, got -1"),
    "frozen dropout of one": ("backbone:\n  frozen_dropout: 1.0\n", "backbone.frozen_dropout (line 2): must be < 1, got 1.0"),
    "frozen dropout on a trained backbone": ("backbone:\n  freeze: false\n  frozen_dropout: 0.5\n", "backbone.frozen_dropout (line 3): applies to a frozen backbone"),
    "fractions": ("data:\n  split:\n    fractions: [0.5, 0.1, 0.1]\n", "data.split.fractions (line 3): fractions must sum to 1"),
    "not a mapping": ("- a\n- b\n", "a recipe must be a YAML mapping"),
}


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_broken_recipe_fails_with_field_path(tmp_path, name):
    text, expected = BROKEN[name]
    path = tmp_path / "broken.yaml"
    path.write_text(text)
    assert_user_error(run_cli("recipes", "validate", path), expected)


def test_yaml_syntax_error_names_the_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  epochs: 3\n  lr: [0.1\nadapters:\n  rank: 2\n")
    assert_user_error(run_cli("recipes", "validate", path), "invalid YAML", "line")


def test_every_problem_is_reported_at_once(tmp_path):
    path = tmp_path / "many.yaml"
    path.write_text("routing:\n  temperature: 0\n  threshold: 2\nadapters:\n  rank: 0\nbogus: 1\n")
    result = run_cli("recipes", "validate", path)
    assert_user_error(result, "4 problems", "routing.temperature (line 2)", "routing.threshold (line 3)", "adapters.rank (line 5)", "bogus (line 6)")


def test_missing_recipe_file(tmp_path):
    assert_user_error(run_cli("train", tmp_path / "nope.yaml"), "does not exist")


def test_set_overrides_are_validated(tmp_path):
    path = tmp_path / "ok.yaml"
    path.write_text("seed: 1\n")
    assert_user_error(run_cli("recipes", "validate", path, "--set", "routing.temprature=0.5"), "--set routing.temprature", "did you mean `temperature`")
    assert_user_error(run_cli("recipes", "validate", path, "--set", "routing.temperature=-2"), "routing.temperature: must be > 0, got -2")
    assert_user_error(run_cli("recipes", "validate", path, "--set", "novalue"), "expected key.path=value")
    ok = run_cli("recipes", "show", path, "--set", "routing.temperature=0.25", "--set", "adapters.layers=[1,2]")
    assert ok.returncode == 0, ok.stderr
    assert "temperature: 0.25" in ok.stdout and "- 1\n" in ok.stdout


def test_set_reaches_nested_optional_sections():
    raw, lines = parse_yaml_text("backbone:\n  pretrain:\n    epochs: 1\n", "x.yaml")
    recipe = validate_raw(raw, "x.yaml", lines)
    assert recipe.backbone.pretrain.epochs == 1
    from cft.recipe.overrides import check_key_path

    assert check_key_path("backbone.pretrain.data.path") == ("backbone", "pretrain", "data", "path")
    assert check_key_path("data.task_kinds.NR-AR") == ("data", "task_kinds", "NR-AR")
    with pytest.raises(CftError, match="is a value, not a section"):
        check_key_path("seed.x")


def test_recipes_list_shows_descriptions():
    result = run_cli("recipes", "list")
    assert result.returncode == 0, result.stderr
    assert "quickstart.yaml" in result.stdout and "Tox21" in result.stdout


def test_every_field_has_a_docstring():
    from pydantic import BaseModel

    from cft.recipe.schema import Recipe

    def walk(model: type[BaseModel], prefix: str = ""):
        for name, field in model.model_fields.items():
            assert field.description, f"{prefix}{name} has no docstring"
            sub = field.annotation
            for candidate in (sub, *getattr(sub, "__args__", ())):
                if isinstance(candidate, type) and issubclass(candidate, BaseModel):
                    walk(candidate, f"{prefix}{name}.")

    walk(Recipe)
