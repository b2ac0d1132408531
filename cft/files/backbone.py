"""Backbone files: safetensors with the backbone's config and a fingerprint in the header.

The fingerprint is a SHA-256 over the config and every tensor; bundles record the fingerprint
of the backbone they were trained against, and loading checks it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Optional

import torch
from pydantic import ValidationError
from safetensors import SafetensorError
from safetensors.torch import load_file

from cft.errors import CftError
from cft.files.stfile import (
    compare_tensors,
    read_header,
    tensor_index,
    write_safetensors,
)
from cft.nn.backbone import Backbone
from cft.spec import BackboneSpec, describe_invalid

BACKBONE_FORMAT = "cft-backbone"
BACKBONE_FORMAT_VERSION = "1"


def fingerprint(spec: BackboneSpec, state: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256(json.dumps(spec.to_dict(), sort_keys=True).encode())
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"\n{name}:{tensor.dtype}:{tuple(tensor.shape)}\n".encode())
        digest.update(tensor.numpy().tobytes() if tensor.dtype != torch.bfloat16 else tensor.view(torch.int16).numpy().tobytes())
    return digest.hexdigest()[:32]


def backbone_fingerprint(backbone: Backbone) -> str:
    return fingerprint(backbone.spec, backbone.state_dict())


def save_backbone(backbone: Backbone, path: str | Path, info: Optional[dict] = None) -> str:
    state = {k: v.detach().cpu().contiguous() for k, v in backbone.state_dict().items()}
    fp = fingerprint(backbone.spec, state)
    header = {
        "format": BACKBONE_FORMAT,
        "format_version": BACKBONE_FORMAT_VERSION,
        "config": backbone.spec.to_dict(),
        "fingerprint": fp,
        "info": info or {},
    }
    write_safetensors(path, state, header)
    return fp


def read_backbone_header(path: str | Path) -> dict:
    header = read_header(path, "backbone")
    if header.get("format") != BACKBONE_FORMAT:
        hint = "That is a bundle; pass a backbone." if header.get("format") == "cft-bundle" else "Pass a backbone.safetensors written by cft."
        raise CftError(f"{path} is not a cft backbone (format {header.get('format')!r}).", hint=hint)
    if header.get("format_version") != BACKBONE_FORMAT_VERSION:
        raise CftError(f"{path} has backbone format version {header.get('format_version')!r}; this cft reads {BACKBONE_FORMAT_VERSION}.")
    return header


def spec_from_dict(raw, source: str) -> BackboneSpec:
    """A BackboneSpec from file metadata, validated by the same model (and bounds) as a recipe's
    backbone section; CftError naming the first problems otherwise."""
    try:
        if not isinstance(raw, dict):
            raise TypeError(f"config is a {type(raw).__name__}, not a mapping")
        return BackboneSpec.from_dict(raw)
    except (ValidationError, TypeError) as exc:
        raise CftError(f"{source}: the backbone config in its metadata is invalid ({describe_invalid(exc)}).", hint="Re-create the file.") from None


def load_backbone(path: str | Path) -> Backbone:
    """Load a backbone file. Its tensors are checked against its config (names, shapes, dtypes,
    from the safetensors header alone) before any memory is allocated, then its fingerprint."""
    path = Path(path)
    metadata = read_backbone_header(path)
    spec = spec_from_dict(metadata.get("config"), str(path))
    index = tensor_index(path, "backbone")
    with torch.device("meta"):
        expected = Backbone(spec).state_dict()
    differences = compare_tensors(expected, index)
    if differences:
        raise CftError(f"{path}: backbone tensors do not match its config ({'; '.join(differences)}).", hint="The file is damaged; re-create it.")
    try:
        backbone = Backbone(spec)
        state = load_file(str(path))
        backbone.load_state_dict(state, strict=True)
    except (KeyError, ValueError, TypeError, RuntimeError, SafetensorError, OSError) as exc:
        raise CftError(f"{path}: backbone tensors do not match its config ({str(exc)[:300]}).", hint="The file is damaged; re-create it.") from None
    if any(v.is_floating_point() and not torch.isfinite(v).all() for v in state.values()):
        raise CftError(f"{path}: the backbone holds NaN or inf weights.", hint="Re-create it (a diverged pretraining?).")
    actual = backbone_fingerprint(backbone)
    if actual != metadata.get("fingerprint"):
        raise CftError(
            f"{path}: fingerprint {metadata.get('fingerprint')} in the header does not match its tensors ({actual}).",
            hint="The file was modified or damaged; re-create it.",
        )
    return backbone
