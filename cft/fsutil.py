"""File-system helpers: every file cft writes goes through an atomic temp-file + rename,
so a crash never leaves a truncated file under its final name."""

from __future__ import annotations

import contextlib
import hashlib
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


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def cache_dir() -> Path:
    """Where featurised datasets and pretrained backbones are cached (CFT_CACHE_DIR)."""
    root = os.environ.get("CFT_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "cft"
    )
    return Path(root)


def inside(base: Path, candidate: Path) -> bool:
    """True when `candidate` resolves to a path inside `base` (no `..` escapes)."""
    try:
        candidate.resolve().relative_to(base.resolve())
        return True
    except ValueError:
        return False


def contained_name(name: str, what: str = "file name") -> str:
    """`name` as one safe path component for a file or folder cft creates inside a folder it was
    given (e.g. a name taken from a recipe, a task list or a bundle's metadata).

    Refuses separators, `..`, absolute paths, drive letters, control characters and empty names,
    so that a name that comes from data can never point outside that folder."""
    text = str(name)
    bad = (
        not text.strip()
        or text in (".", "..")
        or any(sep in text for sep in ("/", "\\"))
        or any(ord(c) < 32 or ord(c) == 127 for c in text)
        or (len(text) >= 2 and text[1] == ":")
        or len(text.encode("utf-8", "surrogatepass")) > 200
    )
    if bad:
        raise CftError(f"{what} {text[:80]!r} cannot be used as a file name: it must be one plain name, without / \\ or '..'.")
    return text


def safe_join(base: str | os.PathLike, *names: str, what: str = "file name") -> Path:
    """`base / name / ...` where every name is one plain component (see `contained_name`) and the
    result, after resolving symlinks, stays inside `base`."""
    base_path = Path(base)
    target = base_path.joinpath(*(contained_name(n, what) for n in names))
    if not inside(base_path, target):
        raise CftError(f"{target} would lie outside {base_path} (through a symbolic link); cft does not write there.")
    return target


def relative_output_dir(value: str, origin: str = "output_dir") -> Path:
    """A run folder named by a recipe (not by --output-dir): a relative path that stays inside the
    current folder. A recipe someone sent you cannot make cft write elsewhere; to write
    elsewhere, say so on the command line with --output-dir."""
    text = str(value)
    path = Path(text).expanduser() if text.startswith("~") else Path(text)
    normalised = os.path.normpath(text) if text else ""
    if not text.strip() or any(ord(c) < 32 for c in text):
        raise CftError(f"{origin} {text!r} is not a folder name.")
    if path.is_absolute() or text.startswith("~") or normalised == ".." or normalised.startswith(".." + os.sep) or normalised == ".":
        raise CftError(
            f"{origin} {text!r} in the recipe points outside the current folder (or at it); a recipe may only name a "
            "run folder below the folder cft runs in.",
            hint="Use a relative path such as runs/NAME, or choose the folder on the command line with --output-dir.",
        )
    return Path(normalised)
