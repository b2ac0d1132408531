"""Short calibration of a composed bundle: only routing and task embeddings train, through the
normal recipe and training path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

from cft.compose.composition import Composition
from cft.console import info as say
from cft.nn.model import CftModel


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
    bounded number of steps. Returns the calibrated model and the calibration run's summary."""
    import tempfile

    from cft.files.bundle import find_backbone_path, load_bundle, read_bundle_info
    from cft.recipe.load import read_yaml_file, resolve_data_root, validate_raw
    from cft.recipe.overrides import apply_override, parse_override
    from cft.training.trainer import train_recipe

    raw, lines = read_yaml_file(recipe_path)
    for text in sets:
        parts, value = parse_override(text)
        apply_override(raw, parts, value)
        lines.pop(parts, None)
    with tempfile.TemporaryDirectory(prefix=".cft-compose-", dir=run_dir.parent if run_dir.parent.exists() else None) as tmp:
        staged = Path(tmp) / "composed.safetensors"
        composition.save(staged)
        staged_info = read_bundle_info(staged)
        # the composed bundle's backbone, found beside its sources: calibration must run on it
        backbone_file = find_backbone_path(staged_info, backbone).resolve()
        spec = composition.model.spec
        bb = spec.backbone
        backbone_raw = dict(raw.get("backbone") or {})
        backbone_raw.update({
            "path": str(backbone_file), "pretrain": None, "freeze": True, "arch": bb.arch, "virtual_node": bb.virtual_node,
            "num_layers": bb.num_layers, "hidden": bb.hidden, "dropout": bb.dropout, "pooling": bb.pooling, "residual": bb.residual,
        })
        raw["backbone"] = backbone_raw
        train_raw = dict(raw.get("train") or {})
        train_raw.update({"init_bundle": str(staged), "trainable": "routing"})
        if not train_raw.get("max_steps"):
            train_raw["max_steps"] = default_steps
            say(f"calibration: the recipe sets no train.max_steps; stopping after {default_steps} steps")
        raw["train"] = train_raw
        data_raw = dict(raw.get("data") or {})
        data_raw["tasks"] = list(spec.tasks)
        raw["data"] = data_raw
        recipe = validate_raw(raw, str(recipe_path), lines)
        recipe.output_dir = str(run_dir)
        root = resolve_data_root(data_root, recipe.data.root)
        summary = train_recipe(recipe, run_dir, root, overwrite=True, device=device, resume_command="")
        model, _ = load_bundle(run_dir / "bundle.safetensors", backbone_path=str(backbone_file))
    return model, summary
