"""Backbones shipped with cft: pretrained once, named in a recipe (`backbone.pretrained: NAME`).

A recipe's own pretrain stage gives a different backbone on every machine (the same seed on two
CPUs sums in another order), and bundles compose only over one backbone fingerprint. A shipped
backbone is the same bytes everywhere, as a published checkpoint is for PEFT or torchvision: no
pretraining to wait for, and bundles trained by different people on it compose.

The files live in the package (`cft/pretrained/`); each entry records the fingerprint its file
must have, so a swapped or damaged file is refused rather than silently trained on.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

from cft.errors import CftError
from cft.files.backbone import load_backbone, read_backbone_header
from cft.nn.backbone import Backbone
from cft.spec import PRETRAINED_BACKBONES


@dataclass(frozen=True)
class ShippedBackbone:
    name: str  # its file is cft/pretrained/<name>.safetensors
    fingerprint: str  # `backbone_fingerprint` of its weights and config
    made_by: str  # how it was made, for `cft recipes backbones`


SHIPPED: dict[str, ShippedBackbone] = {
    b.name: b
    for b in (
        ShippedBackbone(
            name="gin-vn-300x5-masking-hiv",
            fingerprint="9abfcacbf8fcaae14bd83d51b16e6bd1",
            made_by=(
                "attribute masking (15% of the atoms, dropout 0.5) for 3 epochs on the 41,120 molecules of "
                "MoleculeNet's HIV set that RDKit parses, no labels used; seed 0, batch 256, lr 1e-3 (the pretrain "
                "stage `method: masking, data: HIV.csv.gz, epochs: 3`, run on an Intel Xeon on 2026-12-02); float32, 13.4 MB"
            ),
        ),
    )
}
assert tuple(SHIPPED) == PRETRAINED_BACKBONES, "every name a recipe accepts has a file, and no file is unnamed"


def shipped_folder() -> Path:
    """cft/pretrained/ of the installed package."""
    return Path(str(files("cft") / "pretrained"))


def _location(name: str) -> Path:
    return shipped_folder() / f"{name}.safetensors"


def shipped_path(name: str) -> Path:
    """The shipped backbone file of `name` (CftError when the install lacks it)."""
    path = _location(name)
    if not path.is_file():
        raise CftError(f"The shipped backbone {name} is missing from this installation ({path}).", hint="Reinstall cft (the wheel carries cft/pretrained/).")
    return path


def load_shipped(name: str) -> Backbone:
    """The shipped backbone `name`, refused unless its file has the recorded fingerprint
    (`load_backbone` then checks the tensors against the header's)."""
    path = shipped_path(name)
    found = read_backbone_header(path).get("fingerprint")
    if found != SHIPPED[name].fingerprint:
        raise CftError(f"{path}: fingerprint {found}, not the shipped backbone {name}'s ({SHIPPED[name].fingerprint}).", hint="Reinstall cft; the file was replaced.")
    return load_backbone(path)


def shipped_files() -> list[Path]:
    """The shipped backbone files this installation has (where a bundle's backbone is looked for)."""
    return [path for name in SHIPPED if (path := _location(name)).is_file()]
