"""Where a run's starting backbone comes from: the one place that finds, loads, pretrains or makes it.

`choose_backbone` decides and checks the source before anything is written (a file of the wrong
architecture is refused while the output folder is still untouched); `obtain_backbone` then
produces the backbone and keeps a copy in the run folder, so the run's bundle always finds it.
Sources, in order of precedence:

1. `run folder`: a resumed run continues on the copy it made when it started;
2. `file`: a shipped backbone (`backbone.pretrained`), `backbone.path`, or the backbone of
   `train.init_bundle` (found beside that bundle or in the cache, as `cft eval` finds it) when the
   recipe names none of these nor a pretrain stage;
3. `pretrain`: the recipe's pretrain stage (cached by everything that determines it);
4. `random`: a seeded random backbone.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from cft.errors import CftError
from cft.files.atomic import atomic_copy
from cft.files.backbone import load_backbone, save_backbone
from cft.files.bundle import find_backbone_path, read_bundle_info
from cft.files.pretrained import load_shipped, shipped_path
from cft.files.runfolder import RunFolder
from cft.nn.backbone import Backbone
from cft.recipe.schema import Recipe
from cft.spec import BackboneSpec
from cft.training.distributed import DistContext
from cft.training.pretrain import pretrained_backbone
from cft.training.seeding import seed_everything

Source = Literal["run folder", "file", "pretrain", "random"]


@dataclass(frozen=True)
class BackboneChoice:
    """The source of the starting backbone, decided and checked before anything is written."""

    source: Source
    path: Path | None = None  # the file to load or copy (run folder, file)
    loaded: Backbone | None = None  # the checked backbone of a `file` source


def start_path(recipe: Recipe, run: RunFolder) -> Path:
    """The run folder's copy of the starting backbone (a fine-tuned backbone is saved beside it)."""
    return run.file("backbone.safetensors" if recipe.backbone.freeze else "backbone_start.safetensors")


def choose_backbone(recipe: Recipe, run: RunFolder, resume: bool) -> BackboneChoice:
    kept = start_path(recipe, run)
    if resume and kept.exists():
        return BackboneChoice("run folder", kept)
    bb = recipe.backbone
    if bb.pretrained:
        return BackboneChoice("file", shipped_path(bb.pretrained), _matching(recipe, load_shipped(bb.pretrained), f"backbone.pretrained {bb.pretrained}"))
    if bb.path:
        return BackboneChoice("file", Path(bb.path), _matching(recipe, load_backbone(bb.path), f"backbone.path {bb.path}"))
    if recipe.train.init_bundle and not bb.pretrain:
        # the bundle, not the recipe, defines that architecture: taken as it is
        path = Path(find_backbone_path(read_bundle_info(recipe.train.init_bundle)))
        return BackboneChoice("file", path, load_backbone(path))
    return BackboneChoice("pretrain" if bb.pretrain else "random")


def _matching(recipe: Recipe, backbone: Backbone, named: str) -> Backbone:
    """`backbone` (the file `named`), refused when it is not the architecture the recipe describes
    (a silent mismatch would train adapters on layers that do not exist)."""
    bb = recipe.backbone
    wanted = BackboneSpec.of(bb)
    fields = [f for f in BackboneSpec.model_fields if f != "dropout" or not bb.freeze]  # dropout matters only when it trains
    differences = [f"{name}: {getattr(backbone.spec, name)!r} in the file, {getattr(wanted, name)!r} in the recipe" for name in fields if getattr(backbone.spec, name) != getattr(wanted, name)]
    if differences:
        raise CftError(
            f"{named} is not the backbone the recipe describes ({'; '.join(differences)}).",
            hint="Set the recipe's backbone section to the file's architecture (backbone.num_layers, backbone.hidden, ...).",
        )
    return backbone


def obtain_backbone(
    choice: BackboneChoice, recipe: Recipe, run: RunFolder, data_root: Path, device: torch.device, dist: DistContext
) -> tuple[Backbone, dict]:
    """The starting backbone and a description of where it came from (for the run's summary)."""
    kept = start_path(recipe, run)
    if choice.source == "run folder":
        return load_backbone(choice.path), {"source": "run folder"}
    if choice.source == "file":
        if dist.is_main:
            atomic_copy(choice.path, kept)
        shipped = {"pretrained": recipe.backbone.pretrained} if recipe.backbone.pretrained else {}
        return choice.loaded, {"source": "file", "path": str(choice.path), **shipped}
    bb = recipe.backbone
    spec = BackboneSpec.of(bb)
    if choice.source == "pretrain":
        made = dist.main_first(lambda: pretrained_backbone(bb.pretrain, spec, recipe.seed, data_root, kept, device), device)
        backbone, details = made if dist.is_main else (load_backbone(kept), {"source": "pretrain (rank 0)"})
        return backbone, {"source": "pretrain", "method": bb.pretrain.method, **details}
    seed_everything(recipe.seed)
    backbone = Backbone(spec)
    if dist.is_main:
        save_backbone(backbone, kept, info={"source": "random", "seed": recipe.seed})
    return backbone, {"source": "random"}
