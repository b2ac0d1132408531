"""`cft recipes list|validate|show|backbones`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from cft.cli import app
from cft.cli.common import SetOption
from cft.console import out
from cft.recipe.shipped import resolve_recipe, shipped_recipes_dir

recipes_app = typer.Typer(help="List, validate and show recipes, and the backbones a recipe can name.", no_args_is_help=True)
app.add_typer(recipes_app, name="recipes")


def _description(path: Path) -> str:
    import yaml

    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        return str(raw.get("description", "")) if isinstance(raw, dict) else ""
    except (OSError, yaml.YAMLError):
        return "(unreadable)"


@recipes_app.command("list", epilog="Example: cft recipes list")
def list_command(folder: Optional[Path] = typer.Option(None, "--dir", help="Folder of recipes (default: the shipped recipes/).")) -> None:
    """Show the shipped recipes with a one-line description."""
    from cft.errors import CftError

    folder = folder or shipped_recipes_dir()
    files = sorted(folder.glob("*.yaml"))
    if not files:
        raise CftError(f"No recipes (*.yaml) in {folder}.")
    table = Table(title=f"recipes in {folder}", title_justify="left")
    table.add_column("recipe")
    table.add_column("description")
    for f in files:
        table.add_row(str(f), _description(f))
    out.print(table)


@recipes_app.command("validate", epilog="Example: cft recipes validate recipes/*.yaml --set train.epochs=2")
def validate_command(files: List[Path] = typer.Argument(..., help="Recipe files."), sets: Optional[List[str]] = SetOption) -> None:
    """Check recipes; report every problem with its field path and YAML line (exit 2 on any)."""
    from cft.cli import report
    from cft.errors import CftError
    from cft.recipe.load import load_recipe

    failed = 0
    for f in files:
        try:
            load_recipe(f, sets or [])
            out.print(f"[green]ok[/green] {f}")
        except CftError as exc:
            failed += 1
            report(exc)
    if failed:
        raise typer.Exit(2)


@recipes_app.command("show", epilog="Example: cft recipes show recipes/tox21.yaml --set adapters.rank=4   |   cft recipes show default")
def show_command(
    file: Path = typer.Argument(..., help="Recipe file, or the name of a shipped recipe (e.g. `default`, the recipe of `cft train --data CSV`)."),
    sets: Optional[List[str]] = SetOption,
) -> None:
    """Print the resolved recipe (defaults filled in, overrides applied)."""
    from cft.recipe.load import load_recipe, recipe_to_yaml

    # plain text, not the rich console: it would re-wrap long lines at the terminal width (80 columns
    # when redirected to a file), and `cft recipes show ... > mine.yaml` must write valid YAML
    sys.stdout.write(recipe_to_yaml(load_recipe(resolve_recipe(file), sets or [])))


@recipes_app.command("backbones", epilog="Example: cft recipes backbones   (then, in a recipe: backbone: {pretrained: NAME, ...})")
def backbones_command() -> None:
    """Show the backbones shipped with cft, which a recipe names with `backbone.pretrained`."""
    from cft.files.backbone import read_backbone_header
    from cft.files.pretrained import SHIPPED, shipped_path

    # one block per backbone, not a table: the descriptions are sentences, unreadable in 80 columns
    for entry in SHIPPED.values():
        path = shipped_path(entry.name)
        config = read_backbone_header(path).get("config", {})
        out.print(f"[bold]{entry.name}[/bold]", highlight=False)
        out.print(f"  architecture: {', '.join(f'{key} {value}' for key, value in sorted(config.items()))}", highlight=False)
        out.print(f"  fingerprint:  {entry.fingerprint}", highlight=False)
        out.print(f"  made by:      {entry.made_by}", highlight=False)
        out.print(f"  file:         {path}", highlight=False, soft_wrap=True)
