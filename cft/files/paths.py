"""Paths: the cache folder, file hashes, and output folders named inside recipes.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from cft.errors import CftError


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
