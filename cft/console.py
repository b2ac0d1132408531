"""Rich consoles: results go to stdout, progress, warnings and errors to stderr."""

from __future__ import annotations

import contextlib
import os
from typing import Callable, Iterator

from rich.console import Console
from rich.errors import MarkupError
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

out = Console(soft_wrap=False)
err = Console(stderr=True, soft_wrap=True)

_quiet = bool(os.environ.get("CFT_QUIET"))


def set_quiet(value: bool) -> None:
    """Silence progress bars and info lines (non-zero ranks of a distributed run, tests)."""
    global _quiet
    _quiet = value


def is_quiet() -> bool:
    return _quiet


def _print(message: str) -> None:
    try:
        err.print(message, highlight=False)
    except MarkupError:  # a path or name from the user's data that looks like rich markup
        err.print(message, highlight=False, markup=False)


def info(message: str) -> None:
    if not _quiet:
        _print(message)


def warn(message: str) -> None:
    if not _quiet:
        _print(f"[yellow]warning:[/yellow] {message}")


@contextlib.contextmanager
def progress_bar(description: str, total: int, fields: str = "") -> Iterator[Callable[..., None]]:
    """A rich progress bar on stderr; yields advance(n=1, **fields) that also updates fields."""
    if _quiet or not err.is_terminal:
        yield lambda n=1, **kw: None
        return
    columns = [
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[status]}"),
    ]
    with Progress(*columns, console=err, transient=True) as progress:
        task = progress.add_task(escape(description), total=total, status=escape(fields))

        def advance(n: int = 1, **kw: object) -> None:
            status = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in kw.items())
            progress.update(task, advance=n, **({"status": escape(status)} if kw else {}))

        yield advance
