"""Short calibration of a composed bundle: only routing and task embeddings train, through the
normal recipe and training path.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Optional, Sequence

from cft.compose.composition import Composition
from cft.console import info as say
from cft.errors import CftError
from cft.files.bundle import find_backbone_path, load_bundle, read_bundle_info
from cft.nn.model import CftModel
from cft.recipe.load import load_recipe, resolve_data_root, validate_raw
from cft.recipe.schema import BackboneConfig
from cft.training.trainer import train_recipe


def calibrate(
    composition: Composition,
    recipe_path: str | Path,
    sets: Sequence[str],
    run_dir: Path,
    data_root: Optional[str],
    device: Optional[str] = None,
    backbone: Optional[str] = None,
    default_steps: int = 200,
) -> tuple[CftModel, dict]:
    """Train only routing and task embeddings of the composed model, as a recipe says, for a
    bounded number of steps. Returns the calibrated model and the calibration run's summary.

    The recipe (with `sets` applied) is loaded and validated as `cft train` would; the composed
    bundle's backbone, tasks and the routing-only training are then set on it and the result is
    validated again, so calibration runs through the ordinary recipe and training path. The
    recipe's weight average (`train.ema`) is switched off: it starts at the composed weights, and
    over a short run it would keep decay**steps of them in the calibrated bundle (0.995**200 = 37%)."""
    if not any(part.routed for part in composition.model.router.parts):
        # parts with one adapter per layer (the default recipes') or uniform routes hold no router:
        # their composed routes are fixed by the prior, so routing-only training has no parameter
        raise CftError(
            "--calibrate trains the routers of the composed bundle, and none of its parts has one: each "
            "has one adapter per layer (or uniform routes), so the composed routes are fixed by the prior "
            "and --compose-mix. Compose without --calibrate, or train the parts with routed adapters "
            "(adapters.num_adapters > 1).")
    recipe = load_recipe(recipe_path, list(sets))
    with tempfile.TemporaryDirectory(prefix=".cft-compose-", dir=run_dir.parent if run_dir.parent.exists() else None) as tmp:
        staged = Path(tmp) / "composed.safetensors"
        composition.save(staged)
        # the composed bundle's backbone, found beside its sources: calibration must run on it
        backbone_file = find_backbone_path(read_bundle_info(staged), backbone).resolve()
        spec = composition.model.spec
        if not recipe.train.max_steps:
            say(f"calibration: the recipe sets no train.max_steps; stopping after {default_steps} steps")
        if recipe.train.ema is not None:  # why: the docstring (0.995**200 = 37% of the composed routes kept)
            say(f"calibration: train.ema={recipe.train.ema} is not used (an average over a short run keeps much of the uncalibrated routes)")
        calibration = recipe.model_copy(update={
            "output_dir": str(run_dir),
            "backbone": BackboneConfig(**spec.backbone.to_dict(), path=str(backbone_file), pretrain=None, freeze=True),
            "train": recipe.train.model_copy(update={"init_bundle": str(staged), "trainable": "routing", "max_steps": recipe.train.max_steps or default_steps, "ema": None}),
            "data": recipe.data.model_copy(update={"tasks": list(spec.tasks)}),
        })
        calibration = validate_raw(calibration.model_dump(mode="json"), str(recipe_path))
        root = resolve_data_root(data_root, calibration.data.root)
        summary = train_recipe(calibration, run_dir, root, overwrite=True, device=device, resume_command="")
        model, _ = load_bundle(run_dir / "bundle.safetensors", backbone_path=str(backbone_file))
    return model, summary
