"""From a recipe, a dataset and a backbone to the model that trains: the metric, the model spec,
a fresh model or one started from `train.init_bundle`, and which of its parameters train.
(Where the backbone comes from is `cft.training.backbones`.)
"""

from __future__ import annotations

import numpy as np

from cft.data.dataset import MolDataset
from cft.errors import CftError
from cft.files.backbone import backbone_fingerprint
from cft.files.bundle import (
    build_model,
    load_bundle_tensors,
    read_bundle_info,
)
from cft.nn.backbone import Backbone
from cft.nn.model import CftModel
from cft.prior.sources import build_relation
from cft.recipe.schema import Recipe
from cft.spec import METRIC_TASK_KIND, BackboneSpec, ModelSpec, PartSpec
from cft.training.seeding import seed_everything


def resolve_metric(recipe: Recipe, dataset: MolDataset) -> str:
    metric = dataset.metric if recipe.eval.metric == "auto" else recipe.eval.metric
    kinds = set(dataset.kinds)
    needed = METRIC_TASK_KIND[metric]
    if kinds != {needed}:
        fits = ", ".join(m for m, kind in METRIC_TASK_KIND.items() if kinds == {kind}) or "a dataset with one kind of task"
        raise CftError(f"eval.metric {metric} needs {needed} tasks, but {dataset.name} has {' and '.join(sorted(kinds))} tasks.", hint=f"Use {fits}.")
    return metric


def model_spec(recipe: Recipe, dataset: MolDataset, backbone_spec: BackboneSpec) -> ModelSpec:
    ad, rt, pr = recipe.adapters, recipe.routing, recipe.prior
    layers = [] if not ad.enabled else (list(range(backbone_spec.num_layers)) if ad.layers == "all" else list(ad.layers))
    part = PartSpec(
        name=dataset.name, tasks=list(dataset.tasks), layers=layers, num_adapters=ad.num_adapters, rank=ad.rank,
        embed_dim=rt.embed_dim, mode=routing_mode(recipe), temperature=rt.temperature, threshold=rt.threshold, top_k=rt.top_k,
        prior_steps=pr.steps, prior_restart=pr.restart, prior_norm=pr.norm, prior_source=pr.source if pr.source != "learned" else f"learned:{pr.init}",
        learned_prior=pr.source == "learned", prior_anchor=pr.anchor,
    )
    return ModelSpec(
        backbone=backbone_spec, tasks=list(dataset.tasks), kinds=list(dataset.kinds), parts=[part],
        activation=ad.activation, scale=ad.scale, adapter_dropout=ad.dropout, placement=ad.placement, readout=rt.readout,
        virtual_node_adapters=ad.enabled and ad.virtual_node, virtual_node_rank=ad.virtual_node_rank if ad.enabled and ad.virtual_node else None,
        embedding_adapters=ad.enabled and ad.embeddings, embeddings_rank=ad.embeddings_rank if ad.enabled and ad.embeddings else None,
        **target_statistics(dataset),
    )


def routing_mode(recipe: Recipe) -> str:
    """The part's routing mode: the recipe's, but `uniform` for one adapter per layer.

    With K = 1 every route is softmax over one column, R = 1, and alpha(x) = w(x)^T R = sum_t w_t(x)
    = 1 whatever the router holds: a routed part would carry task embeddings, keys and a query
    (10,176 weights on Tox21) that never change the output. AdamW still moved them by lr-sized
    steps on float-noise gradients every step (~9% of a step's time: BENCHMARKS.md, "Speed"), and a composition of such
    bundles would weight each part's tasks with a query that was never trained. A uniform part
    holds no router weights and gives its tasks equal weight, which is what a one-adapter model computes."""
    return "uniform" if recipe.adapters.num_adapters == 1 else recipe.routing.mode


def target_statistics(dataset: MolDataset) -> dict:
    """`target_mean`/`target_std` of the regression tasks on the training split (0 and 1 for binary
    tasks), so every regression task trains on targets of mean 0 and variance 1; {} without any."""
    regression = [k == "regression" for k in dataset.kinds]
    if not any(regression):
        return {}
    labels = dataset.labels("train")
    mean, std = [], []
    for j, is_regression in enumerate(regression):
        observed = labels[:, j][~np.isnan(labels[:, j])]
        m = float(observed.mean()) if is_regression and observed.size else 0.0
        s = float(observed.std()) if is_regression and observed.size > 1 else 1.0
        mean.append(m)
        std.append(s if s > 1e-8 else 1.0)  # a constant task: centred, not scaled
    return {"target_mean": mean, "target_std": std}










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
    recipe: Recipe, dataset: MolDataset, backbone: Backbone, relation: np.ndarray | None = None, init_info=None
) -> tuple[CftModel, dict]:
    """A fresh model, or (train.init_bundle) a bundle's model, e.g. a composed one to calibrate.
    `relation` / `init_info`: the prior or bundle header, when already read and checked."""
    if recipe.train.init_bundle:
        info_ = init_info if init_info is not None else read_init_bundle(recipe, dataset)
        if backbone_fingerprint(backbone) != info_.backbone_fingerprint:
            raise CftError(
                f"train.init_bundle {recipe.train.init_bundle} was trained on backbone {info_.backbone_fingerprint}, but this recipe's "
                f"backbone is {backbone_fingerprint(backbone)}.",
                hint="Set backbone.path to the bundle's backbone.safetensors, or leave backbone.pretrained, backbone.path and backbone.pretrain unset to use it.",
            )
        model = build_model(info_, backbone, freeze_backbone=recipe.backbone.freeze, frozen_dropout=recipe.backbone.frozen_dropout)
        load_bundle_tensors(model, info_)
        return model, {"init_bundle": recipe.train.init_bundle, "provenance": info_.provenance, "data": info_.data}
    seed_everything(recipe.seed)
    spec = model_spec(recipe, dataset, backbone.spec)
    relation = build_relation(recipe.prior, dataset) if relation is None else relation
    model = CftModel(backbone, spec, [relation], freeze_backbone=recipe.backbone.freeze, frozen_dropout=recipe.backbone.frozen_dropout)
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
