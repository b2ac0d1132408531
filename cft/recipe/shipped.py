"""The recipes shipped with cft (recipes/ of the source tree) and finding one by name."""

from __future__ import annotations

import json
from pathlib import Path

DEFAULT_RECIPE = "default"  # what `cft train --data CSV` trains with when no recipe is given


def shipped_recipes_dir() -> Path:
    """recipes/ of the source tree (an editable install) or of the working directory."""
    here = Path(__file__).resolve().parents[2] / "recipes"
    return here if here.is_dir() else Path("recipes")


def resolve_recipe(value: str | Path) -> Path:
    """A recipe file, or the name of a shipped recipe (`default`, `tox21`, ...): an existing path
    wins; otherwise `recipes/<name>.yaml` when it exists; otherwise the path as given (whose
    loading then reports that it does not exist)."""
    path = Path(value)
    if path.exists():
        return path
    name = path.name if path.suffix in (".yaml", ".yml") else f"{path.name}.yaml"
    shipped = shipped_recipes_dir() / name
    if str(path.parent) in (".", "") and shipped.is_file():
        return shipped
    return path


def csv_overrides(path: str | Path, smiles_column: str | None = None, tasks: list[str] | None = None, task_type: str | None = None) -> list[str]:
    """`--set` overrides that point a recipe's `data` at a chemprop-style CSV (`cft train --data`):
    the file (made absolute, so the run folder and its resume command work from anywhere), and the
    SMILES column, task columns/globs and task type when given. Strings are JSON-quoted (valid YAML)."""
    sets = ["data.source=csv", f"data.path={json.dumps(str(Path(path).expanduser().resolve()))}"]
    if smiles_column is not None:
        sets.append(f"data.smiles_column={json.dumps(smiles_column)}")
    if tasks:
        sets.append(f"data.tasks={json.dumps(tasks)}")
    if task_type is not None:
        sets.append(f"data.task_type={json.dumps(task_type)}")
    return sets
