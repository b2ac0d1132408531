"""The `cft` command line: one module per subcommand, registered here."""

from __future__ import annotations

import sys

import typer
from typer.core import TyperGroup

from cft import __version__
from cft.console import err
from cft.errors import CftError, TrainingInterrupted


def report(exc: CftError) -> None:
    # the message holds user data (paths, SMILES, YAML): never interpret it as rich markup
    err.print("[bold red]error:[/bold red] ", end="", highlight=False, markup=True)
    err.print(exc.render(), highlight=False, markup=False)


class CftGroup(TyperGroup):
    """Turns cft's user errors into one paragraph on stderr and exit code 2 (no traceback)."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except CftError as exc:
            report(exc)
            ctx.exit(2)
        except TrainingInterrupted as exc:
            err.print(exc.message, style="yellow", highlight=False, markup=False)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt:  # Ctrl-C outside a training loop: nothing half-written (atomic writes)
            err.print("interrupted.", highlight=False)
            ctx.exit(130)


app = typer.Typer(
    name="cft",
    cls=CftGroup,
    help="Composable fine-tuning of graph neural networks for multi-task molecular property prediction.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        print(f"cft {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    """cft trains low-rank adapters on a frozen molecular GNN, routes between them under a task
    relation graph, and composes the resulting safetensors bundles.

    Start with: [bold]cft train recipes/quickstart.yaml[/bold]
    """


_COMMAND_MODULES = ("train", "eval", "recipes", "compose", "prior", "inspect", "predict", "fingerprint", "ablate", "hpopt")


def _register() -> None:
    # importing a module registers its command(s) on `app`
    import importlib

    for name in _COMMAND_MODULES:
        importlib.import_module(f"cft.cli.{name}")


def main() -> None:
    _register()
    try:
        app(prog_name="cft")
    except CftError as exc:  # raised outside a command (e.g. while parsing)
        report(exc)
        sys.exit(2)


def get_app() -> typer.Typer:
    """The fully registered app (tests, completion generation)."""
    _register()
    return app
