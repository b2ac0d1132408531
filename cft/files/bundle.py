"""Bundles: one .safetensors file holding everything a model has beyond its backbone.

Tensors: adapter banks (`adapters.<layer>.U/V`; `out_adapters.<layer>.U/V` for `mlp-both`;
`vn_adapters.<layer>.U/V` and `vn_out_adapters.<layer>.U/V` on the virtual node's MLP;
`embedding_adapters.0.U/V` on the atom encoder's output), router (`router.parts.<p>.task_embed`,
`.keys.<layer>`, `.query.*`, `.relation`), the union relation matrix (`router.relation`) and the
task heads (`head.*`). The safetensors header metadata (string -> string) holds the format
version, the model spec (backbone config, tasks and kinds, parts with their adapter and
routing settings), the backbone fingerprint, the data identity, metrics and provenance.

Loading reads the header first, rebuilds the model from the spec and then requires the file's
tensors to match it exactly (names, shapes, dtypes); nothing is ever unpickled.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from pydantic import ValidationError
from safetensors import SafetensorError
from safetensors.torch import load_file

from cft import __version__
from cft.errors import CftError
from cft.files.backbone import (
    backbone_fingerprint,
    load_backbone,
    read_backbone_header,
)
from cft.files.paths import cache_dir, sha256_file
from cft.files.pretrained import shipped_files
from cft.files.stfile import (
    compare_tensors,
    dtype_name,
    read_header,
    tensor_index,
    write_safetensors,
)
from cft.nn.backbone import Backbone
from cft.nn.model import CftModel
from cft.spec import METRICS, ModelSpec, describe_invalid

BUNDLE_FORMAT = "cft-bundle"
BUNDLE_FORMAT_VERSION = "3"
READABLE_BUNDLE_VERSIONS = ("1", "2", "3")
"""Version 2 added `spec.readout` and `spec.parts[].prior_restart`, version 3 `spec.parts[].prior_norm`.
A header without them means the spec's defaults (`mixture`, 0, `none`), which are what the earlier
versions computed: such a bundle loads and predicts as it did. A bundle of a later version read by
a cft that knows only earlier ones is refused by version."""


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
    if version not in READABLE_BUNDLE_VERSIONS:
        raise CftError(
            f"{path} has bundle format version {version!r}; this cft ({__version__}) reads versions {', '.join(READABLE_BUNDLE_VERSIONS)}.",
            hint="Use the cft version that wrote it, or re-create the bundle.",
        )
    try:
        info = BundleInfo(
            path=path,
            spec=_spec_from_header(header["spec"]),
            backbone_fingerprint=_expect(header["backbone_fingerprint"], str, "backbone_fingerprint"),
            data=_expect(header.get("data") or {}, dict, "data"),
            metrics=_expect(header.get("metrics") or {}, dict, "metrics"),
            provenance=_expect(header.get("provenance") or {}, dict, "provenance"),
            freeze_backbone=_expect(header.get("freeze_backbone", True), bool, "freeze_backbone"),
        )
    except (KeyError, ValueError, TypeError, AttributeError) as exc:
        raise CftError(f"{path}: the bundle's metadata is damaged ({type(exc).__name__}: {str(exc)[:200]}).", hint="Re-create the bundle.") from None
    _check_metadata(info)
    return info


def _expect(value, kind: type, name: str):
    if not isinstance(value, kind):
        raise TypeError(f"{name} is a {type(value).__name__}, not a {kind.__name__}")
    return dict(value) if kind is dict else value


def _spec_from_header(raw) -> ModelSpec:
    """The model spec of a bundle header, validated by `cft.spec.ModelSpec`: the same models and
    bounds as a recipe, unknown keys refused, cross-field consistency checked."""
    if not isinstance(raw, dict):
        raise TypeError(f"spec is a {type(raw).__name__}, not a mapping")
    try:
        return ModelSpec.from_dict(raw)
    except ValidationError as exc:
        raise ValueError(describe_invalid(exc)) from None


def _check_metadata(info: BundleInfo) -> None:
    """What the spec does not cover: the recorded metric, seed and data settings."""
    problems = []
    metric = info.metrics.get("metric")
    if metric is not None and metric not in METRICS:
        problems.append(f"unknown metric {metric!r}")
    seed = info.provenance.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool):
        problems.append("provenance seed is not an integer")
    if not isinstance(info.data.get("config") or {}, dict):  # read by eval, compose, prior build --bundles
        problems.append("its recorded data settings are damaged (not a mapping)")
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
    sources = info.provenance.get("source_paths", [])
    # paths from metadata are only ever read, and only when they name regular files
    candidates += [Path(p).parent / "backbone.safetensors" for p in (sources if isinstance(sources, list) else []) if isinstance(p, str) and "\0" not in p]
    candidates += sorted((cache_dir() / "pretrained").glob("*.safetensors")) + shipped_files()
    for candidate in candidates:
        if not candidate.is_file() or candidate.resolve() == info.path.resolve():
            continue
        try:
            if read_backbone_header(candidate).get("fingerprint") == want:
                return candidate
        except CftError:
            continue
    raise CftError(
        f"Bundle {info.path} needs backbone {want}, which is neither next to it, nor among the pretrained backbones cached in {cache_dir() / 'pretrained'}, nor shipped with cft.",
        hint="Pass it with --backbone PATH (the backbone.safetensors of the training run).",
    )


def build_model(info: BundleInfo, backbone: Backbone, freeze_backbone: Optional[bool] = None, frozen_dropout: float = 0.0) -> CftModel:
    """The (untrained) model a bundle's metadata describes, on `backbone` (`frozen_dropout`: see
    CftModel; it matters only to further training). The file's tensors are checked against it
    first on the meta device (no memory), so metadata that claims more than the file holds is
    refused instead of allocated."""
    spec = info.spec
    if backbone.spec != spec.backbone:
        raise CftError(f"{info.path}: the backbone's config does not match the one recorded in the bundle.")
    freeze = info.freeze_backbone if freeze_backbone is None else freeze_backbone

    def make() -> CftModel:
        placeholders = [np.eye(len(p.tasks), dtype=np.float32) for p in spec.parts]
        return CftModel(backbone, spec, placeholders, None, freeze_backbone=freeze, frozen_dropout=frozen_dropout)

    index = tensor_index(info.path, "bundle")
    elements = sum(math.prod(shape) for shape, _ in index.values())
    # every task has a row in the T x T relation buffer: T^2 elements bound what may be allocated
    if len(spec.tasks) ** 2 > elements or len(spec.parts) > len(index):
        raise CftError(f"{info.path}: the bundle's metadata describes {len(spec.tasks)} tasks in {len(spec.parts)} parts, more than its tensors hold.", hint="The file is damaged or was edited; re-create it.")
    with torch.device("meta"):
        expected = {k: v for k, v in make().state_dict().items() if not k.startswith("backbone.")}
    differences = compare_tensors(expected, index)
    if differences:
        raise CftError(f"{info.path}: the bundle's tensors do not match its own metadata ({'; '.join(differences)}).", hint="The file is damaged or was edited; re-create it.")
    return make()


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
    # build_model checked the file's index against the spec; this catches a file replaced since
    differences = compare_tensors(model.bundle_state(), {k: (tuple(v.shape), dtype_name(v.dtype)) for k, v in tensors.items()})
    if differences:
        raise CftError(f"{info.path}: the bundle's tensors do not match its own metadata ({'; '.join(differences)}).", hint="The file is damaged or was edited; re-create it.")
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
