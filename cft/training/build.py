"""From a recipe and a dataset to what training needs: device, metric, the backbone (found, loaded,
pretrained or made in one place: `obtain_backbone`), the model and which of its parameters train.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import torch

from cft.data.dataset import MolDataset
from cft.errors import CftError
from cft.files.atomic import (
    atomic_copy,
)
from cft.files.backbone import backbone_fingerprint, load_backbone, save_backbone
from cft.files.bundle import (
    build_model,
    load_bundle_tensors,
    read_bundle_info,
)
from cft.files.runfolder import RunFolder
from cft.nn.backbone import Backbone
from cft.nn.model import CftModel
from cft.prior.sources import build_relation
from cft.recipe.schema import Recipe
from cft.spec import BackboneSpec, ModelSpec, PartSpec
from cft.training.distributed import DistContext
from cft.training.seeding import seed_everything


def pick_device(requested: str, local_rank: int = 0) -> torch.device:
    if requested == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(requested)
    except RuntimeError:
        raise CftError(f"train.device {requested!r} is not a device (use auto, cpu, cuda or cuda:N).") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CftError(f"train.device is {requested!r} but CUDA is not available on this machine.", hint="Use --device cpu or auto.")
    return device


def resolve_metric(recipe: Recipe, dataset: MolDataset) -> str:
    metric = dataset.metric if recipe.eval.metric == "auto" else recipe.eval.metric
    kinds = set(dataset.kinds)
    if metric == "rmse" and kinds != {"regression"}:
        raise CftError(f"eval.metric rmse needs regression tasks, but {dataset.name}'s tasks are binary.", hint="Use rocauc or ap.")
    if metric in ("rocauc", "ap") and kinds != {"binary"}:
        raise CftError(f"eval.metric {metric} needs binary tasks, but {dataset.name} has regression tasks.", hint="Use rmse.")
    return metric


def model_spec(recipe: Recipe, dataset: MolDataset, backbone_spec: BackboneSpec) -> ModelSpec:
    ad, rt, pr = recipe.adapters, recipe.routing, recipe.prior
    layers = [] if not ad.enabled else (list(range(backbone_spec.num_layers)) if ad.layers == "all" else list(ad.layers))
    part = PartSpec(
        name=dataset.name, tasks=list(dataset.tasks), layers=layers, num_adapters=ad.num_adapters, rank=ad.rank,
        embed_dim=rt.embed_dim, mode=rt.mode, temperature=rt.temperature, threshold=rt.threshold, top_k=rt.top_k,
        prior_steps=pr.steps, prior_source=pr.source if pr.source != "learned" else f"learned:{pr.init}",
        learned_prior=pr.source == "learned", prior_anchor=pr.anchor,
    )
    return ModelSpec(
        backbone=backbone_spec, tasks=list(dataset.tasks), kinds=list(dataset.kinds), parts=[part],
        activation=ad.activation, scale=ad.scale, adapter_dropout=ad.dropout,
    )


def backbone_start_path(recipe: Recipe, run: RunFolder) -> Path:
    return run.file("backbone.safetensors" if recipe.backbone.freeze else "backbone_start.safetensors")


def file_backbone_path(recipe: Recipe) -> Optional[Path]:
    """The backbone file a run starts from: `backbone.path`, or, for a run that starts from a bundle
    and names neither a path nor a pretrain stage, that bundle's own backbone (found as `cft eval`
    finds it)."""
    bb = recipe.backbone
    if bb.path:
        return Path(bb.path)
    if recipe.train.init_bundle and not bb.pretrain:
        from cft.files.bundle import find_backbone_path

        return Path(find_backbone_path(read_bundle_info(recipe.train.init_bundle)))
    return None


def load_backbone_file(recipe: Recipe) -> Backbone:
    """The backbone of `backbone.path`, refused when it is not the architecture the recipe describes
    (a silent mismatch would train adapters on layers that do not exist). An init bundle's own
    backbone is taken as it is: the bundle, not the recipe, defines that architecture."""
    bb = recipe.backbone
    if not bb.path:
        return load_backbone(file_backbone_path(recipe))
    backbone = load_backbone(bb.path)
    wanted = BackboneSpec.of(bb)
    fields = ["arch", "virtual_node", "num_layers", "hidden", "pooling", "residual"] + ([] if bb.freeze else ["dropout"])
    differences = [f"{name}: {getattr(backbone.spec, name)!r} in the file, {getattr(wanted, name)!r} in the recipe" for name in fields if getattr(backbone.spec, name) != getattr(wanted, name)]
    if differences:
        raise CftError(
            f"backbone.path {bb.path} is not the backbone the recipe describes ({'; '.join(differences)}).",
            hint="Set the recipe's backbone section to the file's architecture (backbone.num_layers, backbone.hidden, ...).",
        )
    return backbone


def obtain_backbone(
    recipe: Recipe, run: RunFolder, data_root: Path, device: torch.device, resume: bool, dist: DistContext, file_backbone: Optional[Backbone] = None
) -> tuple[Backbone, dict]:
    """The starting backbone: a file, a (cached) pretrain stage, or a seeded random one.
    A copy is kept in the run folder so the run's bundle always finds its backbone."""
    bb = recipe.backbone
    start_path = backbone_start_path(recipe, run)
    if resume and start_path.exists():
        return load_backbone(start_path), {"source": "run folder"}
    if bb.path or file_backbone is not None:
        path = bb.path or file_backbone_path(recipe)
        backbone = file_backbone if file_backbone is not None else load_backbone_file(recipe)
        if dist.is_main:
            atomic_copy(path, start_path)
        return backbone, {"source": "file", "path": str(path)}
    spec = BackboneSpec.of(bb)
    if bb.pretrain:
        from cft.training.pretrain import pretrained_backbone

        made = dist.main_first(lambda: pretrained_backbone(bb.pretrain, spec, recipe.seed, data_root, start_path, device), device)
        backbone, details = made if dist.is_main else (load_backbone(start_path), {"source": "pretrain (rank 0)"})
        return backbone, {"source": "pretrain", "method": bb.pretrain.method, **details}
    seed_everything(recipe.seed)
    backbone = Backbone(spec)
    if dist.is_main:
        save_backbone(backbone, start_path, info={"source": "random", "seed": recipe.seed})
    return backbone, {"source": "random"}


def read_init_bundle(recipe: Recipe, dataset: MolDataset):
    """The header of train.init_bundle, checked against the data's tasks."""
    info_ = read_bundle_info(recipe.train.init_bundle)
    if info_.spec.tasks != dataset.tasks:
        missing = [t for t in info_.spec.tasks if t not in dataset.tasks]
        raise CftError(
            f"train.init_bundle {recipe.train.init_bundle} predicts tasks the data does not provide in that order"
            + (f" (missing: {', '.join(missing[:8])})" if missing else "")
            + ".",
            hint="Select the bundle's tasks, in its order, with data.tasks.",
        )
    return info_


def build_training_model(
    recipe: Recipe, dataset: MolDataset, backbone: Backbone, relation: Optional[np.ndarray] = None, init_info=None
) -> tuple[CftModel, dict]:
    """A fresh model, or (train.init_bundle) a bundle's model, e.g. a composed one to calibrate.
    `relation` / `init_info`: the prior or bundle header, when already read and checked."""
    if recipe.train.init_bundle:
        info_ = init_info if init_info is not None else read_init_bundle(recipe, dataset)
        if backbone_fingerprint(backbone) != info_.backbone_fingerprint:
            raise CftError(
                f"train.init_bundle {recipe.train.init_bundle} was trained on backbone {info_.backbone_fingerprint}, but this recipe's "
                f"backbone is {backbone_fingerprint(backbone)}.",
                hint="Set backbone.path to the bundle's backbone.safetensors, or leave backbone.path and backbone.pretrain unset to use it.",
            )
        model = build_model(info_, backbone, freeze_backbone=recipe.backbone.freeze)
        load_bundle_tensors(model, info_)
        return model, {"init_bundle": recipe.train.init_bundle, "provenance": info_.provenance, "data": info_.data}
    seed_everything(recipe.seed)
    spec = model_spec(recipe, dataset, backbone.spec)
    relation = build_relation(recipe.prior, dataset) if relation is None else relation
    model = CftModel(backbone, spec, [relation], freeze_backbone=recipe.backbone.freeze)
    return model, {}


def set_trainable(model: CftModel, recipe: Recipe) -> None:
    if recipe.train.trainable == "routing":
        model.requires_grad_(False)
        for part in model.router.parts:
            for name, param in part.named_parameters():
                param.requires_grad_(True)
    else:
        model.requires_grad_(True)
        if recipe.backbone.freeze:
            model.backbone.requires_grad_(False)
