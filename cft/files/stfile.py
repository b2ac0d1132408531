"""safetensors files with cft's metadata.

All of cft's metadata lives under one header key, "cft", as canonical JSON (sorted keys).
safetensors keeps header metadata in a hash map whose order changes from process to process,
so with several keys two saves of the same model would differ in bytes; with one key they do
not, and `--resume` can promise the same bundle bytes as an uninterrupted run.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from cft.errors import CftError
from cft.files.atomic import atomic_write_with

HEADER_KEY = "cft"


def write_safetensors(path: str | Path, tensors: dict[str, torch.Tensor], header: dict) -> None:
    metadata = {HEADER_KEY: json.dumps(header, sort_keys=True, default=str)}
    contiguous = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    atomic_write_with(path, lambda tmp: save_file(contiguous, str(tmp), metadata=metadata))


def read_header(path: str | Path, what: str) -> dict:
    """The "cft" header of a safetensors file; CftError if it is missing, unreadable or not cft's."""
    path = Path(path)
    if not path.exists():
        raise CftError(f"{what.capitalize()} {path} does not exist.")
    if path.is_dir():
        raise CftError(f"{path} is a folder, not a {what} file.")
    try:
        with safe_open(str(path), framework="pt") as fh:
            metadata = fh.metadata() or {}
    except (SafetensorError, OSError, ValueError, RuntimeError, UnicodeDecodeError, OverflowError) as exc:
        raise CftError(f"{path} is not a readable safetensors file ({str(exc)[:200]}).", hint=f"It may be truncated or corrupt; re-create the {what}.") from None
    raw = metadata.get(HEADER_KEY)
    if raw is None:
        raise CftError(f"{path} is a safetensors file but not one written by cft (no cft metadata).", hint=f"Pass a {what} written by cft.")
    try:
        header = json.loads(raw)
    except ValueError:
        header = None
    if not isinstance(header, dict):
        raise CftError(f"{path}: its cft metadata is not valid JSON.", hint=f"The file is damaged; re-create the {what}.")
    return header


_DTYPE_NAMES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8", torch.bool: "BOOL",
}


def dtype_name(dtype: torch.dtype) -> str:
    """safetensors' name of a torch dtype ("F32", "I64", ...)."""
    return _DTYPE_NAMES.get(dtype, str(dtype).removeprefix("torch."))


def tensor_index(path: str | Path, what: str) -> dict[str, tuple[tuple[int, ...], str]]:
    """Name -> (shape, dtype name) of every tensor in a safetensors file, read from its header
    alone: nothing is allocated, so a file can be checked against its metadata before loading."""
    try:
        with safe_open(str(path), framework="pt") as fh:
            out = {}
            for name in fh.keys():
                piece = fh.get_slice(name)
                out[name] = (tuple(int(n) for n in piece.get_shape()), str(piece.get_dtype()))
            return out
    except (SafetensorError, OSError, ValueError, RuntimeError, UnicodeDecodeError, OverflowError, TypeError) as exc:
        raise CftError(f"{path} is not a readable safetensors file ({str(exc)[:200]}).", hint=f"It may be truncated or corrupt; re-create the {what}.") from None


def compare_tensors(expected: dict[str, torch.Tensor], found: dict[str, tuple[tuple[int, ...], str]]) -> list[str]:
    """What differs between the tensors a model expects (meta tensors are fine) and a file's index."""
    missing = sorted(set(expected) - set(found))
    extra = sorted(set(found) - set(expected))
    wrong = sorted(
        f"{k} {found[k][0]}/{found[k][1]} (metadata says {tuple(expected[k].shape)}/{dtype_name(expected[k].dtype)})"
        for k in set(expected) & set(found)
        if found[k][0] != tuple(expected[k].shape) or found[k][1] != dtype_name(expected[k].dtype)
    )
    parts = []
    if missing:
        parts.append(f"missing tensors {', '.join(missing[:6])}{' ...' if len(missing) > 6 else ''}")
    if extra:
        parts.append(f"unexpected tensors {', '.join(extra[:6])}{' ...' if len(extra) > 6 else ''}")
    if wrong:
        parts.append(f"shapes that disagree with its metadata: {', '.join(wrong[:4])}{' ...' if len(wrong) > 4 else ''}")
    return parts
