"""Options shared by several subcommands."""

from __future__ import annotations

import typer

from cft.spec import EVAL_BATCH_SIZE

SetOption = typer.Option(
    None, "--set", "-s", metavar="KEY.PATH=VALUE",
    help="Override a recipe field, e.g. --set routing.temperature=0.5 (repeatable; validated like the recipe).",
)
DataRootOption = typer.Option(
    None, "--data-root", metavar="DIR",
    help="Where CSVs and OGB folders live (default: $CFT_DATA_ROOT, then the recipe's data.root, then '.').",
)
DeviceOption = typer.Option(None, "--device", help="auto, cpu, cuda or cuda:N (default: the recipe's train.device, auto).")
EvalBatchOption = typer.Option(EVAL_BATCH_SIZE, "--batch-size", min=1, help="Molecules per batch (a GPU may take more).")

