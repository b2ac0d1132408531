"""Bundles: one .safetensors file holding everything a model has beyond its backbone.

Tensors: adapter banks (`adapters.<layer>.U/V`), router (`router.parts.<p>.task_embed`,
`.keys.<layer>`, `.query.*`, `.relation`), the union relation matrix (`router.relation`) and the
task heads (`head.*`). The safetensors header metadata (string -> string) holds the format
version, the model spec (backbone config, tasks and kinds, parts with their adapter and
routing settings), the backbone fingerprint, the data identity, metrics and provenance.

Loading reads the header first, rebuilds the model from the spec and then requires the file's
tensors to match it exactly (names, shapes, dtypes); nothing is ever unpickled.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from cft import __version__
from cft.backbone import Backbone, backbone_fingerprint, load_backbone, read_backbone_header
from cft.errors import CftError
from cft.fsutil import cache_dir, sha256_file
from cft.model import CftModel, ModelSpec
from cft.stfile import read_header, write_safetensors

BUNDLE_FORMAT = "cft-bundle"
BUNDLE_FORMAT_VERSION = "1"


@dataclass
class BundleInfo:
    path: Path
    spec: ModelSpec
    backbone_fingerprint: str
    data: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    provenance: dict = field(default_factory=dict)
    freeze_backbone: bool = True

    @property
    def tasks(self) -> list[str]:
        return self.spec.tasks


def save_bundle(
    path: str | Path, model: CftModel, *, data: dict, metrics: dict, provenance: dict, fingerprint: Optional[str] = None
) -> None:
    """Write a bundle atomically. Metadata is deterministic (no times), so equal models give equal bytes.

    `fingerprint` names the backbone when `model.backbone` is only a placeholder (a bundle
    assembled from other bundles' tensors, e.g. by `cft compose`, never needs the backbone)."""
    header = {
        "format": BUNDLE_FORMAT,
        "format_version": BUNDLE_FORMAT_VERSION,
        "cft_version": __version__,
        "spec": model.spec.to_dict(),
        "backbone_fingerprint": fingerprint or backbone_fingerprint(model.backbone),
        "freeze_backbone": model.freeze_backbone,
        "data": data,
        "metrics": metrics,
        "provenance": provenance,
    }
    write_safetensors(path, model.bundle_state(), header)


def read_bundle_info(path: str | Path) -> BundleInfo:
    """Read and check a bundle's header (no tensors loaded)."""
    path = Path(path)
    if path.is_dir():
        raise CftError(f"{path} is a folder; pass a run folder holding bundle.safetensors, or the bundle file itself.")
    header = read_header(path, "bundle")
    kind = header.get("format")
    if kind != BUNDLE_FORMAT:
        hint = "That is a backbone; pass a bundle." if kind == "cft-backbone" else "Pass a bundle written by cft train or cft compose."
        raise CftError(f"{path} is not a cft bundle (format {kind!r}).", hint=hint)
    version = header.get("format_version")
    if version != BUNDLE_FORMAT_VERSION:
        raise CftError(
            f"{path} has bundle format version {version!r}; this cft ({__version__}) reads version {BUNDLE_FORMAT_VERSION}.",
            hint="Use the cft version that wrote it, or re-create the bundle.",
        )
    try:
        info = BundleInfo(
            path=path,
            spec=ModelSpec.from_dict(header["spec"]),
            backbone_fingerprint=str(header["backbone_fingerprint"]),
            data=dict(header.get("data") or {}),
            metrics=dict(header.get("metrics") or {}),
            provenance=dict(header.get("provenance") or {}),
            freeze_backbone=bool(header.get("freeze_backbone", True)),
        )
    except (KeyError, ValueError, TypeError, AttributeError) as exc:
        raise CftError(f"{path}: the bundle's metadata is damaged ({type(exc).__name__}: {str(exc)[:200]}).", hint="Re-create the bundle.") from None
    _check_spec(info)
    return info


def _check_spec(info: BundleInfo) -> None:
    spec = info.spec
    problems = []
    if len(spec.tasks) != len(spec.kinds):
        problems.append(f"{len(spec.tasks)} tasks but {len(spec.kinds)} task kinds")
    if [t for p in spec.parts for t in p.tasks] != spec.tasks:
        problems.append("its parts' tasks do not add up to its task list")
    if len(set(spec.tasks)) != len(spec.tasks):
        problems.append("duplicate task names")
    if any(k not in ("binary", "regression") for k in spec.kinds):
        problems.append("unknown task kind")
    from cft.routing import COMPOSE_RULES

    if spec.compose_rule not in COMPOSE_RULES:
        problems.append(f"unknown compose rule {spec.compose_rule!r}")
    if not 0.0 <= float(spec.compose_mix) <= 1.0:
        problems.append(f"compose_mix {spec.compose_mix} outside [0, 1]")
    for p in spec.parts:
        if any(not isinstance(layer, int) or layer < 0 or layer >= spec.backbone.num_layers for layer in p.layers):
            problems.append(f"part {p.name!r} names insertion layers outside the backbone's {spec.backbone.num_layers}")
        if p.num_adapters < 1 or p.rank < 1 or p.embed_dim < 1:
            problems.append(f"part {p.name!r} has non-positive sizes")
    if problems:
        raise CftError(f"{info.path}: the bundle's metadata is inconsistent: {'; '.join(problems)}.", hint="Re-create the bundle.")


def find_backbone(info: BundleInfo, explicit: Optional[str | Path] = None) -> Backbone:
    """The bundle's backbone: `explicit`, else a file with the right fingerprint next to the bundle
    (its folder and the folders of its sources) or in the cache."""
    return load_backbone(find_backbone_path(info, explicit))


def find_backbone_path(info: BundleInfo, explicit: Optional[str | Path] = None) -> Path:
    """Where `find_backbone` finds the bundle's backbone file (CftError when nowhere)."""
    want = info.backbone_fingerprint
    if explicit is not None:
        header = read_backbone_header(explicit)
        if header.get("fingerprint") != want:
            raise CftError(
                f"Backbone {explicit} (fingerprint {header.get('fingerprint')}) is not the one bundle {info.path} was trained on "
                f"(fingerprint {want}).",
                hint="Pass the backbone.safetensors from the bundle's training run.",
            )
        return Path(explicit)
    candidates = [info.path.parent / "backbone.safetensors"]
    candidates += sorted(info.path.parent.glob("*.safetensors"))
    candidates += [Path(p).parent / "backbone.safetensors" for p in info.provenance.get("source_paths", [])]
    candidates += sorted((cache_dir() / "pretrained").glob("*.safetensors"))
    for candidate in candidates:
        if not candidate.exists() or candidate.resolve() == info.path.resolve():
            continue
        try:
            if read_backbone_header(candidate).get("fingerprint") == want:
                return candidate
        except CftError:
            continue
    raise CftError(
        f"Bundle {info.path} needs backbone {want}, which is neither next to it nor among the pretrained backbones cached in {cache_dir() / 'pretrained'}.",
        hint="Pass it with --backbone PATH (the backbone.safetensors of the training run).",
    )


def build_model(info: BundleInfo, backbone: Backbone, freeze_backbone: Optional[bool] = None) -> CftModel:
    spec = info.spec
    if backbone.spec != spec.backbone:
        raise CftError(f"{info.path}: the backbone's config does not match the one recorded in the bundle.")
    placeholders = [np.eye(len(p.tasks), dtype=np.float32) for p in spec.parts]
    freeze = info.freeze_backbone if freeze_backbone is None else freeze_backbone
    return CftModel(backbone, spec, placeholders, None, freeze_backbone=freeze)


def load_bundle(path: str | Path, backbone: Optional[Backbone] = None, backbone_path: Optional[str | Path] = None) -> tuple[CftModel, BundleInfo]:
    """Load a bundle (and its backbone) into a model in eval mode."""
    info = read_bundle_info(path)
    if backbone is None:
        backbone = find_backbone(info, backbone_path)
    elif backbone_fingerprint(backbone) != info.backbone_fingerprint:
        raise CftError(
            f"Bundle {info.path} was trained on backbone {info.backbone_fingerprint}, not {backbone_fingerprint(backbone)}.",
            hint="Use the backbone from the bundle's training run.",
        )
    model = build_model(info, backbone)
    load_bundle_tensors(model, info)
    model.eval()
    return model, info


def load_bundle_shell(path: str | Path) -> tuple[CftModel, BundleInfo]:
    """A bundle's model with a placeholder backbone (random weights, never run): for reading its
    adapters, routes, heads and prior without needing the backbone file (compose, inspect, prior show).
    Calling it on molecules gives meaningless outputs; use `load_bundle` for that."""
    info = read_bundle_info(path)
    with torch.random.fork_rng(devices=[]):  # the placeholder must not disturb the caller's RNG
        placeholder = Backbone(info.spec.backbone)
    model = build_model(info, placeholder)
    load_bundle_tensors(model, info)
    model.eval()
    return model, info


def load_bundle_tensors(model: CftModel, info: BundleInfo) -> None:
    try:
        tensors = load_file(str(info.path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CftError(f"{info.path}: cannot read the bundle's tensors ({str(exc)[:200]}).", hint="The file may be truncated; re-create it.") from None
    expected = model.bundle_state()
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    wrong = sorted(
        f"{k} {tuple(tensors[k].shape)}/{str(tensors[k].dtype).removeprefix('torch.')} (spec says {tuple(expected[k].shape)}/{str(expected[k].dtype).removeprefix('torch.')})"
        for k in set(expected) & set(tensors)
        if tensors[k].shape != expected[k].shape or tensors[k].dtype != expected[k].dtype
    )
    if missing or extra or wrong:
        parts = []
        if missing:
            parts.append(f"missing tensors {', '.join(missing[:6])}{' ...' if len(missing) > 6 else ''}")
        if extra:
            parts.append(f"unexpected tensors {', '.join(extra[:6])}{' ...' if len(extra) > 6 else ''}")
        if wrong:
            parts.append(f"shapes that disagree with its metadata: {', '.join(wrong[:4])}{' ...' if len(wrong) > 4 else ''}")
        raise CftError(f"{info.path}: the bundle's tensors do not match its own metadata ({'; '.join(parts)}).", hint="The file is damaged or was edited; re-create it.")
    bad = [k for k, v in tensors.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise CftError(f"{info.path}: tensors {', '.join(bad[:5])} hold NaN or inf.", hint="Re-create the bundle (a diverged run?).")
    model.load_state_dict(tensors, strict=False)


def bundle_hash(path: str | Path) -> str:
    return sha256_file(path)


def bundle_label(path: str | Path) -> str:
    """A short name for a bundle: its file stem, or its run folder's name for bundle.safetensors."""
    path = Path(path)
    stem = path.name.removesuffix(".safetensors")
    return path.parent.name if stem == "bundle" and path.parent.name else stem


def resolve_bundle_path(target: str | Path) -> Path:
    """A run folder or a bundle file -> the bundle file."""
    target = Path(target)
    if target.is_dir():
        candidate = target / "bundle.safetensors"
        if not candidate.exists():
            raise CftError(f"Run folder {target} has no bundle.safetensors (did its training finish?).", hint="Run `cft train ... --resume` to finish it.")
        return candidate
    return target
