"""Atomic writes: every file cft writes goes to a temporary name beside it and is renamed into
place, so a crash never leaves a truncated file.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from cft.errors import CftError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it over `path` only on success."""
    final = Path(path)
    if final.is_dir():  # refused before anything is written (os.replace would only fail at the end)
        raise CftError(f"Cannot write {final}: it is a folder.", hint="Name a file to write, not a folder.")
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    except OSError as exc:
        raise CftError(
            f"Cannot write {final}: {exc.strerror or exc}.",
            hint="Choose a folder you can write to (e.g. with --output-dir / -o).",
        ) from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        try:
            yield tmp_path
            if tmp_path.exists():
                os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; files should look normal
                _fsync(tmp_path)  # the data is on disk before the name points at it (power loss, not just a crash)
            os.replace(tmp_path, final)
            _fsync(final.parent)
        except OSError as exc:  # disk full, quota, a folder where the file should go, ...
            raise CftError(
                f"Cannot write {final}: {exc.strerror or exc}.",
                hint="Free some space or choose another location; nothing was written under that name.",
            ) from None
    except BaseException:
        with contextlib.suppress(OSError):
            tmp_path.unlink()
        raise


@contextlib.contextmanager
def atomic_paths(*paths: str | os.PathLike | None) -> Iterator[list[Optional[Path]]]:
    """Temporary paths for several files that belong together (a matrix and its task names, a
    picture and a JSON report): every temporary is created first, so an unwritable folder or a
    folder in a file's place fails before anything is written, and each is renamed over its final
    name only after all were written; a failure on the way leaves none of them. `None` entries
    (an optional output not asked for) yield `None`."""
    with contextlib.ExitStack() as stack:
        yield [None if p is None else stack.enter_context(atomic_path(p)) for p in paths]


def _fsync(path: Path) -> None:
    """Flush a file or folder to disk; best effort (some file systems refuse it for folders)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def atomic_write_with(path: str | os.PathLike, writer: Callable[[Path], None]) -> None:
    """Let `writer` write a temp file (e.g. matplotlib savefig, safetensors save_file)."""
    with atomic_path(path) as tmp:
        writer(tmp)


def atomic_copy(source: str | os.PathLike, path: str | os.PathLike) -> None:
    """Copy a file to `path` through a temp file + rename (never a half-copied file)."""
    atomic_write_with(path, lambda tmp: shutil.copyfile(source, tmp))


def _json_default(obj: Any) -> Any:
    # numpy scalars and paths show up in metrics and metadata
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
