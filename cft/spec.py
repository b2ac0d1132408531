"""What a model is, as frozen pydantic models: the one place where the bounds of every knob live.

A recipe (`cft.recipe.schema`) and a bundle's metadata (`cft.files.bundle`) are validated by
these same models and bounded types, so a bound tightened here is tightened for both. This
module imports nothing of cft and nothing heavy (no torch): recipes are checked before torch
is even imported.

- `BackboneSpec`: the GNN's architecture (the recipe's `backbone` section inherits its fields);
- `PartSpec`: what one trained part contributes (its tasks, adapter banks, routing settings);
- `ModelSpec`: the whole model (backbone, tasks and kinds, parts, composition settings).
"""

from __future__ import annotations

import math
from typing import Annotated, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

# --------------------------------------------------------------------------- names

TASK_KINDS = ("binary", "regression")
METRICS = ("rocauc", "ap", "rmse")
"""Validation/test metrics; every list of metric names in cft is derived from this one."""
HIGHER_IS_BETTER = {"rocauc": True, "ap": True, "rmse": False}
METRIC_TASK_KIND = {"rocauc": "binary", "ap": "binary", "rmse": "regression"}
"""The kind of task each metric scores."""
EVAL_BATCH_SIZE = 128
"""Molecules per batch when a model scores or embeds molecules without training (each epoch's
validation, `cft eval`, `cft predict`, `cft fingerprint`): on 2-core CPUs 128 ran Tox21's
molecules 1.08-1.16x faster than 256 (larger batches leave the cache: 512 ran at 0.65-0.8x);
a GPU may want more (`eval.batch_size`, `--batch-size`)."""
ACTIVATIONS = ("identity", "relu", "gelu", "tanh")
ROUTING_MODES = ("routed", "uniform")
COMPOSE_RULES = ("propagate", "residual")
PRIOR_NORMS = ("none", "pairnorm")
"""What follows the propagation of the task embeddings (`PartSpec.prior_norm`): nothing, or
PairNorm (centre over tasks, rescale to the embeddings' own RMS norm) against over-smoothing."""
READOUTS = ("task", "mixture")
"""How tasks read the adapted representation (`ModelSpec.readout`): `task` (each task reads the
experts of the last insertion layer through its own gates) or `mixture` (every task reads one
representation adapted with the per-molecule mixture over all task routes)."""
PLACEMENTS = ("output", "mlp", "mlp-hidden", "mlp-out", "mlp-both")
"""Where an insertion layer's adapters act (`ModelSpec.placement`): on the layer's `output`
(h <- h + s f(h) after the layer), in parallel to its GIN `mlp` (MLP(z) + s f(z) on the MLP's
input z, the aggregated messages, before the layer's BatchNorm), on the MLP's hidden layer
(`mlp-hidden`: W_1 z + s f(z), f: d -> 2d, before the MLP's own BatchNorm and ReLU, where LoRA on
the MLP's first Linear acts), or beside the MLP's second Linear (`mlp-out`: W_2 u + s f(u) on its
input u = ReLU(BN(W_1 z)), f: 2d -> d, where LoRA on that Linear acts), or both at once (`mlp-both`:
two banks per layer under the same weights, where LoRA on both Linears acts). All but `output`: GIN only."""
ARCHS = ("gin", "gcn")
POOLINGS = ("mean", "sum", "max")
PRETRAINED_BACKBONES = ("gin-vn-300x5-masking-hiv",)
"""Backbones shipped with cft, by name (`backbone.pretrained` of a recipe; the files and what made
them: `cft.files.pretrained`)."""
PRIOR_METHODS = ("phi", "jaccard", "cosine")
"""Label statistics a relation matrix can be computed with (`cft.prior.relation`)."""

TaskKind = Literal[TASK_KINDS]
Metric = Literal[METRICS]
Activation = Literal[ACTIVATIONS]
RoutingMode = Literal[ROUTING_MODES]
ComposeRule = Literal[COMPOSE_RULES]
Readout = Literal[READOUTS]
Placement = Literal[PLACEMENTS]
PriorNorm = Literal[PRIOR_NORMS]
PretrainedBackbone = Literal[PRETRAINED_BACKBONES]

# --------------------------------------------------------------------------- bounded types

NumLayers = Annotated[int, Field(ge=1, le=32)]
Hidden = Annotated[int, Field(ge=2, le=4096)]
Dropout = Annotated[float, Field(ge=0, lt=1)]
NumAdapters = Annotated[int, Field(ge=1, le=256)]
Rank = Annotated[int, Field(ge=1, le=1024)]
EmbedDim = Annotated[int, Field(ge=1, le=1024)]
Positive = Annotated[float, Field(gt=0, allow_inf_nan=False)]
NonNegative = Annotated[float, Field(ge=0, allow_inf_nan=False)]
Threshold = Annotated[float, Field(ge=0, lt=1)]
PropagationSteps = Annotated[int, Field(ge=0, le=16)]
Fraction = Annotated[float, Field(ge=0, le=1)]
LayerIndex = Annotated[int, Field(ge=0)]


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True, validate_default=True)

    def to_dict(self) -> dict:
        """A JSON-ready mapping (what a file's header stores)."""
        return self.model_dump(mode="json")

    @classmethod
    def from_dict(cls, raw: dict):
        """Validate a mapping read from a file (unknown keys and out-of-range values refused)."""
        return cls.model_validate(raw)


# --------------------------------------------------------------------------- backbone


class BackboneSpec(_Frozen):
    """The architecture of a backbone; a backbone file records it and the fingerprint covers it."""

    arch: Literal[ARCHS] = "gin"
    """Message-passing layer: GIN (the OGB baseline) or GCN, both with OGB bond features."""
    virtual_node: bool = True
    """Add the OGB virtual node (GIN-VN / GCN-VN)."""
    num_layers: NumLayers = 5
    """Message-passing layers L."""
    hidden: Hidden = 300
    """Hidden size d."""
    dropout: Dropout = 0.5
    """Dropout between layers (active only when the backbone is trained)."""
    pooling: Literal[POOLINGS] = "mean"
    """Graph pooling."""
    residual: bool = False
    """Residual connections between layers (OGB option)."""

    @classmethod
    def of(cls, config: BaseModel) -> "BackboneSpec":
        """The architecture part of a richer config (the recipe's `backbone` section)."""
        return cls.model_validate(config.model_dump(include=set(cls.model_fields)))


# --------------------------------------------------------------------------- parts and models


class PartSpec(_Frozen):
    """What one trained part contributes to a model: its tasks, adapter banks and routing settings."""

    name: str
    tasks: list[str]
    layers: list[LayerIndex]
    """Insertion layers of its adapters (empty: no adapters)."""
    num_adapters: NumAdapters
    rank: Rank
    embed_dim: EmbedDim = 32
    mode: RoutingMode = "routed"
    temperature: Positive = 1.0
    threshold: Threshold = 0.05
    top_k: Optional[Annotated[int, Field(ge=1)]] = None
    prior_steps: PropagationSteps = 2
    prior_restart: Fraction = 0.0
    """a: restart (teleport) weight of the propagation E <- (1 - a) A_hat E + a E_0 (APPNP); 0 is plain
    graph convolution E~ = A_hat^k E_0 (and what a header without the field means)."""
    prior_norm: PriorNorm = "none"
    """`pairnorm`: E~ <- PairNorm(E~) * rms(E_0) after the propagation (see `cft.nn.routing`); `none`
    (and what a header without the field means): E~ as propagated."""
    prior_source: str = "labels"
    learned_prior: bool = False
    prior_anchor: NonNegative = 1.0
    source_hash: Optional[str] = None
    """sha256 of the bundle it came from, when composed."""
    extra: dict = Field(default_factory=dict)

    @model_validator(mode="after")
    def _consistent(self) -> "PartSpec":
        if len(set(self.layers)) != len(self.layers):
            raise ValueError(f"part {self.name!r} repeats an insertion layer")
        if self.top_k is not None and self.top_k > self.num_adapters:
            raise ValueError(f"part {self.name!r} has top_k {self.top_k} > num_adapters {self.num_adapters}")
        return self

    @property
    def query_layer(self) -> Optional[int]:
        return min(self.layers) if self.layers else None


class ModelSpec(_Frozen):
    """Everything that decides a model's shape and forward pass, except the backbone's weights."""

    backbone: BackboneSpec
    tasks: list[str]
    kinds: list[TaskKind]
    parts: list[PartSpec]
    activation: Activation = "gelu"
    scale: Positive = 1.0
    adapter_dropout: Dropout = 0.0
    placement: Placement = "output"
    """Where the adapters act (`PLACEMENTS`, `cft.nn.model`); a header without the field is `output`,
    which is where bundles written before it existed put them."""
    virtual_node_adapters: bool = False
    """With `placement` `mlp-both`: banks on the virtual node's MLP too, in each insertion layer but the
    last (`vn_adapters`, `vn_out_adapters`; `cft.nn.model`). A header without the field is false."""
    virtual_node_rank: Optional[Rank] = None
    """The width of the virtual-node banks when it differs from `bank_rank` (`virtual_node_bank_rank`);
    None, and a header without the field: `bank_rank`."""
    embedding_adapters: bool = False
    """A bank on the atom encoder's embeddings too (`embedding_adapters.0`, `cft.nn.adapters.EmbeddingAdapterBank`),
    under the weights of insertion layer 0, which some part must adapt. A header without the field is false."""
    embeddings_rank: Optional[Rank] = None
    """The width of the embeddings' bank when it differs from `bank_rank` (`embedding_bank_rank`);
    None, and a header without the field: `bank_rank`."""
    compose_steps: PropagationSteps = 0
    compose_threshold: Threshold = 0.0
    compose_rule: ComposeRule = "propagate"
    """How composed parts share adapters (`cft.nn.routing.Router`); `cft compose` writes `residual`."""
    compose_mix: Fraction = 1.0
    readout: Readout = "mixture"
    """`task`: the adapters of the last insertion layer are experts, each pooled once, and task t reads
    sum_k R_tk z_k(x) through its own gates R_t; `mixture`: every task reads the one representation
    adapted with alpha(x) = w(x)^T R (`cft.nn.model`). A header without the field is `mixture`, so
    bundles written before it existed predict as they did; recipes default to `task`."""
    target_mean: Optional[list[float]] = None
    target_std: Optional[list[float]] = None
    """Per task, the training split's label mean and standard deviation (regression tasks; 0 and 1
    for binary ones): the head predicts standardised targets u and the model outputs
    y_hat = std * u + mean, in the label's units. None (no regression task, or a header written
    before the fields existed) is the identity."""
    extra: dict = Field(default_factory=dict)

    @property
    def target_affine(self) -> tuple[list[float], list[float]]:
        """(mean, std) per task, the identity where the spec records none."""
        n = len(self.tasks)
        return (list(self.target_mean) if self.target_mean is not None else [0.0] * n, list(self.target_std) if self.target_std is not None else [1.0] * n)

    @model_validator(mode="after")
    def _consistent(self) -> "ModelSpec":
        problems = []
        for name in ("target_mean", "target_std"):
            values = getattr(self, name)
            if values is not None and len(values) != len(self.tasks):
                problems.append(f"{name} has {len(values)} values for {len(self.tasks)} tasks")
            if values is not None and not all(math.isfinite(v) for v in values):
                problems.append(f"{name} holds a value that is not finite")
        if self.target_std is not None and any(v <= 0 for v in self.target_std):
            problems.append("target_std must be > 0 for every task")
        if not self.tasks or not self.parts:
            problems.append("no tasks or no parts")
        if len(self.tasks) != len(self.kinds):
            problems.append(f"{len(self.tasks)} tasks but {len(self.kinds)} task kinds")
        if [t for p in self.parts for t in p.tasks] != self.tasks:
            problems.append("its parts' tasks do not add up to its task list")
        if len(set(self.tasks)) != len(self.tasks):
            problems.append("duplicate task names")
        if self.placement != "output" and self.backbone.arch != "gin":
            problems.append(f"adapters placed in the GIN MLP ({self.placement}) need a gin backbone, not {self.backbone.arch}")
        if self.virtual_node_adapters and (self.placement != "mlp-both" or not self.backbone.virtual_node):
            problems.append("adapters on the virtual node's MLP need placement mlp-both and a backbone with a virtual node")
        if self.virtual_node_rank is not None and not self.virtual_node_adapters:
            problems.append("virtual_node_rank is given for virtual-node banks the model does not have")
        if self.embeddings_rank is not None and not self.embedding_adapters:
            problems.append("embeddings_rank is given for an embeddings' bank the model does not have")
        if self.embedding_adapters:
            layers = sorted({layer for p in self.parts for layer in p.layers})
            if 0 not in layers:
                problems.append("adapters on the atom embeddings act under the weights of layer 0, which no part adapts")
            elif self.readout == "task" and layers[-1] == 0:
                problems.append("adapters on the atom embeddings need an insertion layer above 0 under the task read-out (layer 0 would hold its experts)")
        for p in self.parts:
            if any(layer >= self.backbone.num_layers for layer in p.layers):
                problems.append(f"part {p.name!r} names insertion layers outside the backbone's {self.backbone.num_layers}")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def bank_rank(self) -> int:
        return max((p.rank for p in self.parts if p.layers), default=0)

    @property
    def virtual_node_bank_rank(self) -> int:
        """The width of the virtual-node banks: `virtual_node_rank`, else `bank_rank`."""
        return self.virtual_node_rank if self.virtual_node_rank is not None else self.bank_rank

    @property
    def embedding_bank_rank(self) -> int:
        """The width of the embeddings' bank: `embeddings_rank`, else `bank_rank`."""
        return self.embeddings_rank if self.embeddings_rank is not None else self.bank_rank


def concatenated_target_affine(specs: list[ModelSpec]) -> dict:
    """`target_mean`/`target_std` for a model whose tasks are the specs' tasks in order (composition,
    merges); {} when none of them standardises, so such headers stay as they were."""
    if all(s.target_mean is None and s.target_std is None for s in specs):
        return {}
    return {"target_mean": [m for s in specs for m in s.target_affine[0]], "target_std": [v for s in specs for v in s.target_affine[1]]}


def describe_invalid(exc: Exception, limit: int = 3) -> str:
    """The first `limit` problems of a failed validation as one short line (for file errors)."""
    if isinstance(exc, ValidationError):
        text = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'value'}: {e['msg'].removeprefix('Value error, ')}" for e in exc.errors()[:limit])
    else:
        text = str(exc)
    return text[:300]
