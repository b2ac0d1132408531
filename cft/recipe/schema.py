"""The recipe tree: one pydantic model per section, every knob with a default and a docstring.

The docstring is the field's description (shown by `cft recipes show --fields`). Unknown keys
are rejected. Bounds of everything a bundle also records (backbone, adapters, routing) come
from `cft.spec`, so a recipe and a bundle's metadata are validated by the same rules.
"""

from __future__ import annotations

from typing import Any, Literal, Optional, Union, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator

from cft.spec import (
    EVAL_BATCH_SIZE,
    METRICS,
    PRIOR_METHODS,
    Activation,
    BackboneSpec,
    Dropout,
    EmbedDim,
    Fraction,
    NonNegative,
    NumAdapters,
    Placement,
    Positive,
    PretrainedBackbone,
    PriorNorm,
    PropagationSteps,
    Rank,
    Readout,
    RoutingMode,
    TaskKind,
    Threshold,
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, validate_default=True)


class SplitConfig(_Strict):
    method: Literal["auto", "scaffold", "scaffold_balanced", "random", "column", "file", "official"] = "auto"
    """How molecules are split: `auto` (OGB's official split for OGB data, else scaffold),
    `scaffold` (Bemis-Murcko groups, largest to train, as OGB does: one split per dataset),
    `scaffold_balanced` (Bemis-Murcko groups in a seeded order, the large ones first: another
    scaffold split per seed, as chemprop's `scaffold_balanced`),
    `random` (seeded), `column` (a CSV column holding train/valid/test), `file` (a chemprop
    `splits.json` at `path`, such as the one every run folder holds) or `official` (OGB's split)."""
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    """Train/valid/test fractions for `scaffold`, `scaffold_balanced` and `random`; they must sum to 1."""
    column: Optional[str] = None
    """For `method: column`: the CSV column whose values are train / valid / test."""
    path: Optional[str] = None
    """For `method: file`: a chemprop splits.json (a list with one object of `train`, `val`, `test`
    lists of 0-based data-row indices of the input); relative paths are read from the data root."""
    seed: Optional[int] = None
    """Seed of the `scaffold_balanced` and `random` splits; defaults to the recipe's seed."""

    @field_validator("fractions")
    @classmethod
    def _fractions_sum_to_one(cls, value: tuple[float, float, float]) -> tuple[float, float, float]:
        if any(f < 0 for f in value):
            raise ValueError("fractions must be non-negative")
        if abs(sum(value) - 1.0) > 1e-6:
            raise ValueError(f"fractions must sum to 1 (they sum to {sum(value):g})")
        if value[0] <= 0:
            raise ValueError("the train fraction must be > 0")
        return value


class DataConfig(_Strict):
    source: Literal["builtin", "csv", "ogb"] = "builtin"
    """`builtin` (NCI molecules shipped in the rdkit wheel, labels computed by RDKit; offline),
    `csv` (chemprop-style CSV: SMILES + task columns) or `ogb` (an `ogbg-mol*` dataset by name)."""
    path: Optional[str] = None
    """CSV file (`.csv` or `.csv.gz`) for `source: csv`; relative paths are read from the data root."""
    name: Optional[str] = None
    """OGB dataset name for `source: ogb`, e.g. `ogbg-moltox21`."""
    root: Optional[str] = None
    """Data root where CSVs and OGB folders live. `--data-root` and `CFT_DATA_ROOT` override it."""
    smiles_column: Optional[str] = None
    """SMILES column of a CSV; default: the first column named like SMILES (`smiles`, `smi`,
    `canonical_smiles`, `isomeric_smiles` or `mol`, in any case), else the first column."""
    tasks: Optional[list[str]] = None
    """Task columns to use, by name or glob (e.g. `NR-*`), in the order given; each entry must match
    a column. Default: every other column."""
    exclude_columns: list[str] = Field(default_factory=list)
    """Columns (names or globs) that are not tasks, e.g. an id or a split column."""
    task_kinds: dict[str, TaskKind] = Field(default_factory=dict)
    """Override the inferred kind of a task (binary when all labels are 0/1, else regression)."""
    task_type: Literal["auto", "classification", "regression"] = "auto"
    """Kind of every task not named in `task_kinds`: `auto` (inferred per task), `classification`
    (binary: labels must be 0/1) or `regression` (chemprop's `-t`; `cft train --task-type`)."""
    split: SplitConfig = Field(default_factory=SplitConfig)
    """How molecules are split into train/valid/test."""
    strict: bool = False
    """Refuse instead of leaving out: SMILES that RDKit cannot parse (else skipped and listed in
    skipped_smiles.csv) and task columns without a label, or without one in the training split
    (else left out and listed in dropped_tasks.json)."""
    limit: Optional[int] = Field(default=None, ge=1)
    """Use only the first N rows (quick experiments and tests)."""


class PretrainConfig(_Strict):
    method: Literal["masking", "contrastive", "masking+contrastive", "supervised"] = "masking"
    """`masking`: self-supervised attribute masking (labels unused); `contrastive`: GraphCL, two
    views of each molecule with `drop_rate` of its atoms removed, their pooled states pulled
    together against the batch's other molecules (labels unused); `masking+contrastive`: both
    objectives on the same two views, summed; `supervised`: multi-task training on the labels
    of `data`."""
    data: DataConfig = Field(default_factory=DataConfig)
    """Molecules (and, for `supervised`, labels) to pretrain on; for the self-supervised methods a CSV may hold SMILES only."""
    epochs: int = Field(default=3, ge=1)
    """Pretraining epochs."""
    batch_size: int = Field(default=256, ge=1)
    """Pretraining batch size."""
    lr: float = Field(default=1e-3, gt=0)
    """Pretraining learning rate (Adam)."""
    mask_rate: float = Field(default=0.15, gt=0, lt=1)
    """Fraction of atoms masked per molecule for `masking` (and `masking+contrastive`)."""
    drop_rate: float = Field(default=0.2, gt=0, lt=1)
    """Fraction of atoms removed, with their bonds, from each view for `contrastive` (GraphCL's
    node dropping at its ratio 0.2)."""
    temperature: float = Field(default=0.1, gt=0)
    """Temperature of the contrastive loss (NT-Xent; GraphCL's molecule pretraining uses 0.1)."""
    cache: bool = True
    """Reuse a backbone pretrained earlier with the same settings (cache keyed by all of them)."""


class BackboneConfig(BackboneSpec):
    """The architecture fields (and their bounds) are `cft.spec.BackboneSpec`'s; a recipe adds
    where the weights come from and whether they train."""

    model_config = ConfigDict(extra="forbid", frozen=False, use_attribute_docstrings=True, validate_default=True)

    pretrained: Optional[PretrainedBackbone] = None
    """Start from a backbone shipped with cft, by name (`cft recipes backbones` lists them, with
    what made them): the same weights, and so the same fingerprint, on every machine, so bundles
    trained by different people compose. The recipe's architecture fields must be the file's."""
    path: Optional[str] = None
    """Start from this backbone .safetensors file instead of random weights or a pretrain stage."""
    pretrain: Optional[PretrainConfig] = None
    """Pretrain the backbone first (saved as backbone.safetensors in the run folder)."""
    freeze: bool = True
    """Freeze the backbone (adapter training). `false` trains everything: the full fine-tuning baseline."""
    frozen_dropout: Dropout = 0.0
    """Dropout rate after each layer of the frozen backbone while the adapters train (its BatchNorm
    keeps the pretraining statistics; nothing is dropped at evaluation). 0 keeps the frozen
    backbone a fixed function, which lets the layers below the first adapter be cached."""


class AdapterConfig(_Strict):
    enabled: bool = True
    """Insert adapter banks. `false` with a frozen backbone is the head-only baseline."""
    num_adapters: NumAdapters = 4
    """K: adapters per insertion layer."""
    rank: Rank = 8
    """r: rank of each adapter f(z) = V phi(U z)."""
    layers: Union[Literal["all"], list[int]] = "all"
    """Insertion layers (0-based outputs of message-passing layers), or `all`."""
    activation: Activation = "gelu"
    """phi between U and V (`identity` makes each adapter a LoRA-style linear update)."""
    scale: Positive = 1.0
    """s in h <- h + s * sum_i alpha_i f_i(h)."""
    dropout: Dropout = 0.0
    """Dropout on adapter inputs during training."""
    placement: Placement = "output"
    """`output`: h <- h + s f(h) on each insertion layer's output. `mlp` (GIN only): the adapter runs
    in parallel to the layer's GIN MLP, MLP(z) + s f(z) on the aggregated messages z, before the
    layer's BatchNorm and ReLU (AdapterGNN's parallel placement). `mlp-hidden` (GIN only): on the
    MLP's hidden layer, W_1 z + s f(z) with f: d -> 2d, before the MLP's BatchNorm and ReLU (where
    LoRA on the MLP's first Linear acts). `mlp-out` (GIN only): beside the MLP's second Linear,
    W_2 u + s f(u) on its input u = ReLU(BN(W_1 z)), f: 2d -> d (where LoRA on that Linear acts).
    `mlp-both` (GIN only): `mlp-hidden` and `mlp-out` together, two banks per layer whose experts
    share their weights (where LoRA on both Linears acts; twice the adapter weights)."""
    virtual_node: bool = False
    """With `placement: mlp-both` on a backbone with a virtual node: two more banks in each insertion
    layer but the last, of the same K and rank, on the virtual node's MLP (into its first Linear's
    output and beside its second Linear: where LoRA on those Linears acts). The last layer updates
    no virtual node. About 1.8x the adapter weights of `mlp-both` alone with every layer adapted."""
    virtual_node_rank: Optional[Rank] = None
    """Rank of the virtual node's banks when it should differ from `rank` (PEFT's `rank_pattern` for
    those Linears); unset, they take `rank`. Each of their adapters holds 3d r weights (d -> 2d and
    2d -> d): 10,800 per layer at d = 300, K = 1, r = 6."""
    embeddings: bool = False
    """One more bank of the same K and rank on the atom encoder's embeddings, under layer 0's weights
    (layer 0 must be adapted): f_i reads the atom's features, so with `activation: identity` it is a
    rank-r update of the encoder's tables (LoRA on the embeddings). (n + d) r weights per adapter,
    n = 174 atom feature values for OGB's encoder: 5,688 at d = 300, r = 12."""
    embeddings_rank: Optional[Rank] = None
    """Rank of the embeddings' bank when it should differ from `rank`; unset, it takes `rank`. At most
    min(n, backbone.hidden) (n = 174 for OGB's encoder): the rank of the map it updates."""

    @field_validator("layers", mode="before")
    @classmethod
    def _layers(cls, value: Any) -> Any:
        if value == "all":
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, list) or not value:
            raise ValueError("must be `all` or a non-empty list of layer indices")
        if any(not isinstance(v, int) or isinstance(v, bool) or v < 0 for v in value):
            raise ValueError("layer indices must be integers >= 0")
        if len(set(value)) != len(value):
            raise ValueError("layer indices must not repeat")
        return sorted(value)


class PriorConfig(_Strict):
    source: Literal["labels", "file", "identity", "learned"] = "labels"
    """Relation matrix A over tasks: from training `labels`, a `file` (.npy/.csv), `identity`
    (no structure: the ablation), or `learned` (initialised from `init`, kept near it)."""
    init: Literal["labels", "file", "identity"] = "labels"
    """Initial value of a `learned` prior."""
    path: Optional[str] = None
    """.npy (allow_pickle=False) or .csv (task names as header and index) for `file`."""
    method: Literal[PRIOR_METHODS] = "phi"
    """Label statistic for `labels`: |phi| correlation, Jaccard of positives, or cosine."""
    min_support: int = Field(default=20, ge=1)
    """Minimum co-labelled molecules for a task pair to get an edge."""
    min_value: float = Field(default=0.1, ge=0)
    """Edges weaker than this are dropped (sparsification)."""
    top_k: Optional[int] = Field(default=None, ge=1)
    """Keep only each task's K strongest neighbours (symmetrised)."""
    steps: PropagationSteps = 2
    """k: graph-convolution steps of the task embeddings over the normalised prior."""
    restart: Fraction = 0.0
    """a: restart weight of each step, E <- (1 - a) A_hat E + a E_0 (APPNP); 0 is plain graph
    convolution (E~ = A_hat^k E_0), larger keeps more of each task's own embedding, so routes do not
    smooth out over a large, dense prior."""
    norm: PriorNorm = "none"
    """`pairnorm`: centre the propagated task embeddings over the tasks and rescale them to the
    RMS norm of the unpropagated ones (PairNorm). Over a large, dense prior the propagation
    shrinks every task's embedding towards one common vector (measured on ToxCast's label prior:
    RMS norm 10x smaller, spread across tasks 30x smaller), so every route becomes uniform; this
    keeps the differences the graph leaves between tasks at the embeddings' own scale."""
    anchor: NonNegative = 1.0
    """For `learned`: weight of ||A - A_init||^2 that keeps the learned prior near its source."""


class RoutingConfig(_Strict):
    mode: RoutingMode = "routed"
    """`routed`: gated, prior-shaped routing; `uniform`: every adapter weighted 1/K (ablation).
    With `adapters.num_adapters: 1` there is nothing to route (every route is 1): the part is
    trained and saved as `uniform`, without router weights."""
    temperature: Positive = 1.0
    """tau: routing temperature of softmax(E K^T / (tau sqrt(m)))."""
    threshold: Threshold = 0.05
    """g: routes under this weight are zeroed and the rest renormalised (straight-through)."""
    top_k: Optional[int] = Field(default=None, ge=1)
    """Keep only the k largest routes per task (after the threshold)."""
    embed_dim: EmbedDim = 32
    """m: size of task embeddings and adapter keys."""
    readout: Readout = "task"
    """`task`: the adapters of the last insertion layer are experts, pooled once, and task t reads
    sum_k R_tk z_k(x) through its own gates R_t, so its prediction depends on its own route;
    `mixture`: every task reads one representation adapted with alpha(x) = w(x)^T R (the first
    formulation, kept for the ablation; bundles without the field use it)."""


class TrainConfig(_Strict):
    epochs: int = Field(default=30, ge=1)
    """Maximum epochs."""
    batch_size: int = Field(default=32, ge=1)
    """Molecules per batch (global, over all processes)."""
    lr: float = Field(default=1e-3, gt=0)
    """Peak learning rate (AdamW)."""
    head_lr: Optional[float] = Field(default=None, gt=0)
    """Learning rate of the task heads; default: `lr`."""
    up_lr_ratio: float = Field(default=1.0, gt=0)
    """lambda = lr_V / lr_U: the adapters' up-projections V (initialised to zero) learn at
    lambda * lr, their down-projections U and everything else at lr (LoRA+, Hayou et al. 2024;
    PEFT's `loraplus_lr_ratio`). 1: one rate for both."""
    weight_decay: float = Field(default=0.0, ge=0)
    """AdamW weight decay."""
    scheduler: Literal["constant", "cosine", "plateau"] = "cosine"
    """LR schedule: constant, cosine decay (after warm-up) or reduce-on-plateau of the valid metric."""
    warmup_epochs: int = Field(default=0, ge=0)
    """Linear warm-up epochs."""
    grad_clip: Optional[float] = Field(default=5.0, gt=0)
    """Clip the global gradient norm to this value; null disables."""
    ema: Optional[float] = Field(default=None, gt=0, lt=1)
    """Decay of an exponential moving average of the trainable weights, theta_ema <- decay *
    theta_ema + (1 - decay) * theta after every step (e.g. 0.995: about the last 200 steps).
    Validation, the choice of the best epoch, the saved bundle and the test score use the averaged
    weights; BatchNorm statistics are the current ones. null (off) by default."""
    patience: Optional[int] = Field(default=10, ge=1)
    """Early stopping: epochs without a better valid metric (or loss, see `select_on`); null disables."""
    select_on: Literal["metric", "loss"] = "metric"
    """What judges each epoch on the validation split: `metric` (eval.metric, e.g. ROC-AUC) or `loss`
    (the task loss, lower is better: chemprop's `val_loss` monitor). It picks the best epoch (whose
    weights the bundle keeps), drives early stopping and the `plateau` scheduler."""
    reg_strength: float = Field(default=0.01, ge=0)
    """lambda: weight of the prior consistency regulariser in L = L_task + lambda L_reg."""
    route_entropy: float = Field(default=0.0, ge=0)
    """beta: weight of the routes' mean entropy over ln K (1 when uniform, 0 when each task uses one
    adapter) added to the loss, L = L_task + lambda L_reg + beta H/ln K: pushes each task's gates
    towards few adapters. 0 (off) by default. Alone it can send every task to the same adapter;
    `route_balance` keeps the adapters in use."""
    route_balance: float = Field(default=0.0, ge=0)
    """gamma: weight of (1 - H(mean route)/ln K) in the loss, on the same layers as route_entropy:
    0 when the tasks together spread their weight evenly over the adapters, 1 when all use the same
    one (the load-balancing term of mixtures of experts, taken over tasks). With route_entropy it
    rewards tasks that pick few adapters and *different* ones. 0 (off) by default."""
    trainable: Literal["auto", "routing"] = "auto"
    """`auto`: adapters, router and heads (and the backbone unless frozen); `routing`: only
    router and task embeddings (calibration of a composed bundle)."""
    max_steps: Optional[int] = Field(default=None, ge=1)
    """Stop after this many optimiser steps in total (bounded calibration)."""
    init_bundle: Optional[str] = None
    """Start from this bundle (e.g. a composed one) instead of fresh adapters."""
    device: str = "auto"
    """`auto` (CUDA when available, else CPU), `cpu`, `cuda` or `cuda:N`."""
    bf16: bool = True
    """bf16 autocast on CUDA, training and evaluation (on CPU see `bf16_cpu`)."""
    bf16_cpu: bool = False
    """bf16 autocast of the training steps on a CPU that computes bf16 natively (AVX512-BF16 or
    AMX; fp32 on any other CPU, where it would be emulated and slower). Matrix products run in
    bf16 with fp32 weights, optimiser and loss; validation, test and predictions stay fp32. Off by
    default: on the AVX512-BF16 EPYC of BENCHMARKS.md it kept the score but did not pay in
    training (1.08x in one epoch, none over four; commit 81dd543)."""
    frozen_bf16: Literal["auto", True, False, "backward"] = "auto"
    """The frozen backbone's GIN MLP and virtual-node MLP products in bf16 while training (the steps
    and the validation of each epoch): forward product and input gradient of each frozen Linear take bf16 inputs and
    accumulate in fp32; every other value (messages, norms, adapters, heads, loss, optimiser) stays
    fp32, and the final valid/test scores, the bundle and its predictions are fp32. `true`: on any
    device (a CPU without native bf16 emulates it, slower); `false`: fp32 throughout; `backward`:
    the input gradients' products only (the forward pass, the loss and the validation stay fp32;
    only the gradients reaching the adapters are rounded), on CUDA and on a CPU that multiplies
    bf16 natively (AVX512-BF16 or AMX), fp32 on any other CPU. `auto`: both products on a CPU with
    AMX tiles (Intel Sapphire Rapids and later), where they run several times faster; `backward`
    on a CPU with AVX512-BF16 and no AMX (AMD Zen 4 and later); fp32 on CUDA and on any other CPU.
    No effect on a trained (unfrozen) backbone or under bf16 autocast."""
    compile: bool = False
    """Opt-in torch.compile of the model."""
    deterministic: bool = True
    """torch's deterministic kernels where it has non-deterministic ones (mostly CUDA's scatter and index sums):
    two runs of one recipe and seed at one CPU thread give identical bundles; at more threads they
    agree on most runs, but 1 in about 20 differed in the last bits on one CPU (AVX2 kernels under
    load). `false` allows the faster non-deterministic kernels where torch has them."""
    dist_backend: Literal["auto", "gloo", "nccl"] = "auto"
    """torch.distributed backend for multi-process runs: `auto` is NCCL on CUDA, gloo on CPU."""
    num_workers: int = Field(default=0, ge=0)
    """DataLoader worker processes."""
    threads: Optional[int] = Field(default=None, ge=1)
    """torch CPU threads; default: torch's choice."""
    prefix_cache: Literal["memory", "disk", "recompute"] = "memory"
    """Frozen backbone: the node and virtual-node states entering the first insertion layer are
    computed once per molecule and reused every epoch (`memory`), also kept under
    `$CFT_CACHE_DIR/prefix/` for later runs (`disk`), or recomputed every step (`recompute`). Costs
    4 x hidden bytes per atom and per molecule (float32); nothing when adapters start at layer 0.
    Head only (`adapters.enabled: false`): the whole backbone's states, so only the heads run."""
    prefix_cache_bf16: bool = False
    """Keep the cached prefix states in bf16: half the memory, not bit-identical to `recompute`."""
    tensorboard: Optional[bool] = None
    """TensorBoard event files in `<run>/tensorboard/` (losses, valid metric per task and mean, lr,
    routing entropy and routing matrices per epoch): null writes them when the `tensorboard`
    package is installed (`pip install 'cft[tensorboard]'`), true requires it, false never."""


class EvalConfig(_Strict):
    metric: Literal[("auto",) + METRICS] = "auto"
    """Validation/test metric; `auto`: the OGB metric of the dataset (ROC-AUC for binary CSV tasks,
    RMSE for regression)."""
    batch_size: int = Field(default=EVAL_BATCH_SIZE, ge=1)
    """Batch size of each epoch's validation and of the final scores (128: the fastest measured on CPU)."""


class Recipe(_Strict):
    description: str = ""
    """One line shown by `cft recipes list`."""
    seed: int = 0
    """Seed for everything (splits, initialisation, shuffling)."""
    output_dir: Optional[str] = None
    """Run folder; default runs/<recipe name>. `--output-dir` overrides."""
    data: DataConfig = Field(default_factory=DataConfig)
    """Dataset the adapters are trained and evaluated on."""
    backbone: BackboneConfig = Field(default_factory=BackboneConfig)
    """The frozen (or fine-tuned) GNN."""
    adapters: AdapterConfig = Field(default_factory=AdapterConfig)
    """Low-rank adapter banks."""
    prior: PriorConfig = Field(default_factory=PriorConfig)
    """Task relation matrix (structural prior)."""
    routing: RoutingConfig = Field(default_factory=RoutingConfig)
    """Gated routing between adapters."""
    train: TrainConfig = Field(default_factory=TrainConfig)
    """Optimisation."""
    eval: EvalConfig = Field(default_factory=EvalConfig)
    """Evaluation."""


def field_names(model: type[BaseModel], path: tuple) -> list[str]:
    """Valid field names at `path` (for 'did you mean' hints)."""
    current: Any = model
    for part in path:
        sub = submodel(current, part)
        if sub is None:
            return []
        current = sub
    return list(current.model_fields) if isinstance(current, type) and issubclass(current, BaseModel) else []


def submodel(model: Any, name: Any) -> Optional[type[BaseModel]]:
    if not (isinstance(model, type) and issubclass(model, BaseModel)) or name not in model.model_fields:
        return None
    annotation = model.model_fields[name].annotation
    for candidate in (annotation, *get_args(annotation)):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None
