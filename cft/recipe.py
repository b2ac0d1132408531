"""Recipes: one pydantic model tree, loaded from YAML, overridable with `--set key.path=value`.

Every knob of the method has a field here with a default and a docstring (the docstring is
the field's description, shown by `cft recipes show --fields`). Unknown keys are rejected.
Validation problems are reported all at once, each with its field path and YAML line.
"""

from __future__ import annotations

import difflib
import os
import reprlib
from pathlib import Path
from typing import Any, Literal, Optional, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from cft.errors import CftError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, validate_default=True)


# --------------------------------------------------------------------------- data


class SplitConfig(_Strict):
    method: Literal["auto", "scaffold", "random", "column", "official"] = "auto"
    """How molecules are split: `auto` (OGB's official split for OGB data, else scaffold),
    `scaffold` (Bemis-Murcko groups, largest to train, as OGB does),
    `random` (seeded), `column` (a CSV column holding train/valid/test) or `official` (OGB's split)."""
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    """Train/valid/test fractions for `scaffold` and `random`; they must sum to 1."""
    column: Optional[str] = None
    """For `method: column`: the CSV column whose values are train / valid / test."""
    seed: Optional[int] = None
    """Seed of the `random` split; defaults to the recipe's seed."""

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
    """SMILES column of a CSV; default: the first column."""
    tasks: Optional[list[str]] = None
    """Task columns to use, by name or glob (e.g. `NR-*`); default: every other column."""
    exclude_columns: list[str] = Field(default_factory=list)
    """Columns (names or globs) that are not tasks, e.g. an id or a split column."""
    task_kinds: dict[str, Literal["binary", "regression"]] = Field(default_factory=dict)
    """Override the inferred kind of a task (binary when all labels are 0/1, else regression)."""
    split: SplitConfig = Field(default_factory=SplitConfig)
    """How molecules are split into train/valid/test."""
    strict: bool = False
    """Fail on SMILES that RDKit cannot parse instead of skipping (and listing) them."""
    limit: Optional[int] = Field(default=None, ge=1)
    """Use only the first N rows (quick experiments and tests)."""


# --------------------------------------------------------------------------- backbone


class PretrainConfig(_Strict):
    method: Literal["masking", "supervised"] = "masking"
    """`masking`: self-supervised attribute masking (labels unused); `supervised`: multi-task
    training on the labels of `data`."""
    data: DataConfig = Field(default_factory=DataConfig)
    """Molecules (and, for `supervised`, labels) to pretrain on."""
    epochs: int = Field(default=3, ge=1)
    """Pretraining epochs."""
    batch_size: int = Field(default=256, ge=1)
    """Pretraining batch size."""
    lr: float = Field(default=1e-3, gt=0)
    """Pretraining learning rate (Adam)."""
    mask_rate: float = Field(default=0.15, gt=0, lt=1)
    """Fraction of atoms masked per molecule for `masking`."""
    cache: bool = True
    """Reuse a backbone pretrained earlier with the same settings (cache keyed by all of them)."""


class BackboneConfig(_Strict):
    arch: Literal["gin", "gcn"] = "gin"
    """Message-passing layer: GIN (the OGB baseline) or GCN, both with OGB bond features."""
    virtual_node: bool = True
    """Add the OGB virtual node (GIN-VN / GCN-VN)."""
    num_layers: int = Field(default=5, ge=1, le=32)
    """Message-passing layers L."""
    hidden: int = Field(default=300, ge=2, le=4096)
    """Hidden size d."""
    dropout: float = Field(default=0.5, ge=0, lt=1)
    """Dropout between layers (active only when the backbone is trained)."""
    pooling: Literal["mean", "sum", "max"] = "mean"
    """Graph pooling."""
    residual: bool = False
    """Residual connections between layers (OGB option)."""
    path: Optional[str] = None
    """Start from this backbone .safetensors file instead of random weights or a pretrain stage."""
    pretrain: Optional[PretrainConfig] = None
    """Pretrain the backbone first (saved as backbone.safetensors in the run folder)."""
    freeze: bool = True
    """Freeze the backbone (adapter training). `false` trains everything: the full fine-tuning baseline."""


# --------------------------------------------------------------------------- method


class AdapterConfig(_Strict):
    enabled: bool = True
    """Insert adapter banks. `false` with a frozen backbone is the head-only baseline."""
    num_adapters: int = Field(default=4, ge=1, le=256)
    """K: adapters per insertion layer."""
    rank: int = Field(default=8, ge=1, le=1024)
    """r: rank of each adapter f(z) = V phi(U z)."""
    layers: Union[Literal["all"], list[int]] = "all"
    """Insertion layers (0-based outputs of message-passing layers), or `all`."""
    activation: Literal["identity", "relu", "gelu", "tanh"] = "gelu"
    """phi between U and V (`identity` makes each adapter a LoRA-style linear update)."""
    scale: float = Field(default=1.0, gt=0)
    """s in h <- h + s * sum_i alpha_i f_i(h)."""
    dropout: float = Field(default=0.0, ge=0, lt=1)
    """Dropout on adapter inputs during training."""

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
    method: Literal["phi", "jaccard", "cosine"] = "phi"
    """Label statistic for `labels`: |phi| correlation, Jaccard of positives, or cosine."""
    min_support: int = Field(default=20, ge=1)
    """Minimum co-labelled molecules for a task pair to get an edge."""
    min_value: float = Field(default=0.1, ge=0)
    """Edges weaker than this are dropped (sparsification)."""
    top_k: Optional[int] = Field(default=None, ge=1)
    """Keep only each task's K strongest neighbours (symmetrised)."""
    steps: int = Field(default=2, ge=0, le=16)
    """k: graph-convolution steps of the task embeddings over the normalised prior."""
    anchor: float = Field(default=1.0, ge=0)
    """For `learned`: weight of ||A - A_init||^2 that keeps the learned prior near its source."""


class RoutingConfig(_Strict):
    mode: Literal["routed", "uniform"] = "routed"
    """`routed`: gated, prior-shaped routing; `uniform`: every adapter weighted 1/K (ablation)."""
    temperature: float = Field(default=1.0, gt=0)
    """tau: routing temperature of softmax(E K^T / (tau sqrt(m)))."""
    threshold: float = Field(default=0.05, ge=0, lt=1)
    """g: routes under this weight are zeroed and the rest renormalised (straight-through)."""
    top_k: Optional[int] = Field(default=None, ge=1)
    """Keep only the k largest routes per task (after the threshold)."""
    embed_dim: int = Field(default=32, ge=1, le=1024)
    """m: size of task embeddings and adapter keys."""


class TrainConfig(_Strict):
    epochs: int = Field(default=30, ge=1)
    """Maximum epochs."""
    batch_size: int = Field(default=32, ge=1)
    """Molecules per batch (global, over all processes)."""
    lr: float = Field(default=1e-3, gt=0)
    """Peak learning rate (AdamW)."""
    head_lr: Optional[float] = Field(default=None, gt=0)
    """Learning rate of the task heads; default: `lr`."""
    weight_decay: float = Field(default=0.0, ge=0)
    """AdamW weight decay."""
    scheduler: Literal["constant", "cosine", "plateau"] = "cosine"
    """LR schedule: constant, cosine decay (after warm-up) or reduce-on-plateau of the valid metric."""
    warmup_epochs: int = Field(default=0, ge=0)
    """Linear warm-up epochs."""
    grad_clip: Optional[float] = Field(default=5.0, gt=0)
    """Clip the global gradient norm to this value; null disables."""
    patience: Optional[int] = Field(default=10, ge=1)
    """Early stopping: epochs without a better valid metric; null disables."""
    reg_strength: float = Field(default=0.01, ge=0)
    """lambda: weight of the prior consistency regulariser in L = L_task + lambda L_reg."""
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
    """bf16 autocast on CUDA (ignored on CPU)."""
    compile: bool = False
    """Opt-in torch.compile of the model."""
    dist_backend: Literal["auto", "gloo", "nccl"] = "auto"
    """torch.distributed backend for multi-process runs: `auto` is NCCL on CUDA, gloo on CPU."""
    num_workers: int = Field(default=0, ge=0)
    """DataLoader worker processes."""
    threads: Optional[int] = Field(default=None, ge=1)
    """torch CPU threads; default: torch's choice."""


class EvalConfig(_Strict):
    metric: Literal["auto", "rocauc", "ap", "rmse"] = "auto"
    """Validation/test metric; `auto`: the OGB metric of the dataset (ROC-AUC for binary CSV tasks,
    RMSE for regression)."""
    batch_size: int = Field(default=256, ge=1)
    """Batch size for evaluation."""


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


# --------------------------------------------------------------------------- semantic checks


def semantic_problems(recipe: Recipe) -> list[tuple[tuple, str, Any]]:
    """Cross-field rules pydantic field types cannot express: (path, message, value)."""
    out: list[tuple[tuple, str, Any]] = []

    def data_rules(prefix: tuple, data: DataConfig) -> None:
        if data.source == "csv" and not data.path:
            out.append((prefix + ("path",), "required when source is csv", None))
        if data.source == "ogb":
            if not data.name:
                out.append((prefix + ("name",), "required when source is ogb", None))
            elif not data.name.startswith("ogbg-mol"):
                out.append((prefix + ("name",), "must be an ogbg-mol* dataset", data.name))
        if data.split.method == "column" and not data.split.column:
            out.append((prefix + ("split", "column"), "required when split.method is column", None))
        if data.split.method == "official" and data.source != "ogb":
            out.append((prefix + ("split", "method"), "`official` exists only for source: ogb", "official"))

    data_rules(("data",), recipe.data)
    bb = recipe.backbone
    if bb.path and bb.pretrain:
        out.append((("backbone", "pretrain"), "give either backbone.path or backbone.pretrain, not both", None))
    if bb.pretrain:
        data_rules(("backbone", "pretrain", "data"), bb.pretrain.data)
    ad = recipe.adapters
    if isinstance(ad.layers, list):
        bad = [layer for layer in ad.layers if layer >= bb.num_layers]
        if bad:
            out.append((("adapters", "layers"), f"layer indices must be < backbone.num_layers ({bb.num_layers})", bad))
    if ad.rank > bb.hidden:
        out.append((("adapters", "rank"), f"must be <= backbone.hidden ({bb.hidden})", ad.rank))
    if recipe.routing.top_k is not None and recipe.routing.top_k > ad.num_adapters:
        out.append((("routing", "top_k"), f"must be <= adapters.num_adapters ({ad.num_adapters})", recipe.routing.top_k))
    pr = recipe.prior
    if (pr.source == "file" or (pr.source == "learned" and pr.init == "file")) and not pr.path:
        out.append((("prior", "path"), "required when the prior comes from a file", None))
    if recipe.train.trainable == "routing" and not recipe.train.init_bundle:
        out.append((("train", "init_bundle"), "trainable: routing calibrates an existing bundle; give its path", None))
    if recipe.eval.metric == "rmse" and recipe.data.source == "builtin":
        out.append((("eval", "metric"), "the builtin tasks are binary; use ap or rocauc", "rmse"))
    return out


# --------------------------------------------------------------------------- loading


def _yaml_lines(text: str) -> dict[tuple, int]:
    """Map each key path in a YAML document to its 1-based line number."""
    lines: dict[tuple, int] = {}
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except (yaml.YAMLError, ValueError, TypeError, RecursionError):
        return lines
    seen: set[int] = set()

    def walk(node: Any, path: tuple) -> None:
        # an alias (*name) is the same node object again: walking it once keeps anchors that nest
        # aliases ("billion laughs") linear instead of exponential
        if id(node) in seen:
            return
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                key = key_node.value
                lines[path + (key,)] = key_node.start_mark.line + 1
                walk(value_node, path + (key,))
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                lines[path + (i,)] = item.start_mark.line + 1
                walk(item, path + (i,))

    try:
        walk(root, ())
    except RecursionError:
        pass
    return lines


def _describe_error(err: dict) -> str:
    kind, ctx = err["type"], err.get("ctx") or {}
    templates = {
        "greater_than": "must be > {gt}",
        "greater_than_equal": "must be >= {ge}",
        "less_than": "must be < {lt}",
        "less_than_equal": "must be <= {le}",
        "missing": "required field is missing",
        "int_parsing": "must be an integer",
        "int_from_float": "must be an integer",
        "int_type": "must be an integer",
        "float_parsing": "must be a number",
        "float_type": "must be a number",
        "bool_parsing": "must be true or false",
        "bool_type": "must be true or false",
        "string_type": "must be a string",
        "list_type": "must be a list",
        "dict_type": "must be a mapping",
        "model_type": "must be a mapping of fields",
        "model_attributes_type": "must be a mapping of fields",
        "literal_error": "must be one of {expected}",
        "tuple_type": "must be a list",
        "too_short": "has too few items",
        "too_long": "has too many items",
    }
    if kind in templates:
        try:
            pretty = {k: (f"{v:g}" if isinstance(v, float) else v) for k, v in ctx.items()}
            return templates[kind].format(**pretty)
        except (KeyError, IndexError):
            pass
    msg = err.get("msg", kind)
    return msg.removeprefix("Value error, ")


def _field_names(model: type[BaseModel], path: tuple) -> list[str]:
    """Valid field names at `path` (for 'did you mean' hints)."""
    current: Any = model
    for part in path:
        sub = _model_of(current, part)
        if sub is None:
            return []
        current = sub
    return list(current.model_fields) if isinstance(current, type) and issubclass(current, BaseModel) else []


def _model_of(model: Any, name: Any) -> Optional[type[BaseModel]]:
    if not (isinstance(model, type) and issubclass(model, BaseModel)) or name not in model.model_fields:
        return None
    annotation = model.model_fields[name].annotation
    for candidate in (annotation, *get_args(annotation)):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def format_problems(source: str, problems: list[tuple[tuple, str, Any, bool]], lines: dict[tuple, int]) -> str:
    """One line per problem: `path (line N): message, got value`."""
    rendered = []
    for path, message, value, show_value in problems:
        dotted = ".".join(str(p) for p in path) or "(top level)"
        line = None
        for cut in range(len(path), 0, -1):  # nearest enclosing key that has a line
            if path[:cut] in lines:
                line = lines[path[:cut]]
                break
        where = f" (line {line})" if line else ""
        got = f", got {_short_repr(value)}" if show_value else ""
        rendered.append(f"  {dotted}{where}: {message}{got}")
    noun = "problem" if len(problems) == 1 else "problems"
    return f"{source}: {len(problems)} {noun}:\n" + "\n".join(rendered)


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother, _REPR.maxlist, _REPR.maxdict = 2, 60, 60, 4, 4


def _short_repr(value: Any) -> str:
    """repr of a user's value, bounded in size and depth (YAML aliases can nest a value in itself)."""
    return _REPR.repr(value)


def validate_raw(raw: dict, source: str, lines: Optional[dict[tuple, int]] = None) -> Recipe:
    """Validate a raw mapping; raise CftError listing every problem with its path and line."""
    lines = lines or {}
    try:
        recipe = Recipe.model_validate(raw)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = tuple(err["loc"])
            # drop pydantic's union-member tags (`list[int]`, `literal['all']`), but never the
            # unknown key itself, which is the user's text and may contain anything
            keep_last = err["type"] == "extra_forbidden" and loc
            head = loc[:-1] if keep_last else loc
            path = tuple(p for p in head if not (isinstance(p, str) and ("[" in p or p.startswith("literal")))) + (loc[-1:] if keep_last else ())
            message = _describe_error(err)
            if err["type"] == "extra_forbidden":
                names = _field_names(Recipe, path[:-1])
                close = difflib.get_close_matches(str(path[-1]), names, n=1)
                message = "unknown field" + (f" (did you mean `{close[0]}`?)" if close else "")
                if names:
                    message += f"; valid fields here: {', '.join(names)}"
                problems.append((path, message, None, False))
            else:
                problems.append((path, message, err.get("input"), err["type"] != "missing"))
        raise CftError(format_problems(source, _dedupe(problems), lines)) from None
    semantic = semantic_problems(recipe)
    if semantic:
        raise CftError(
            format_problems(source, [(p, m, v, v is not None) for p, m, v in semantic], lines)
        )
    return recipe


def _dedupe(problems: list) -> list:
    seen, out = set(), []
    for problem in problems:
        key = (problem[0], problem[1])
        if key not in seen:
            seen.add(key)
            out.append(problem)
    return out


def read_yaml_file(path: str | os.PathLike) -> tuple[dict, dict[tuple, int]]:
    """Read a recipe YAML into a raw mapping plus key-path -> line numbers."""
    p = Path(path)
    if not p.exists():
        raise CftError(f"Recipe file {p} does not exist.", hint="Check the path; `cft recipes list` shows shipped recipes.")
    if p.is_dir():
        raise CftError(f"Recipe path {p} is a folder, not a YAML file.")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CftError(f"Cannot read recipe {p}: {exc}.") from None
    return parse_yaml_text(text, str(p))


def parse_yaml_text(text: str, source: str) -> tuple[dict, dict[tuple, int]]:
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise CftError(f"{source}{where}: invalid YAML: {problem}.", hint="Fix the syntax (indentation, colons, quotes).") from None
    except (ValueError, TypeError, RecursionError) as exc:  # e.g. absurd numbers or nesting
        raise CftError(f"{source}: invalid YAML: {exc}.") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise CftError(f"{source}: a recipe must be a YAML mapping of fields (data, backbone, ...), got {type(raw).__name__}.")
    return raw, _yaml_lines(text)


# --------------------------------------------------------------------------- --set overrides


def check_key_path(dotted: str, origin: str = "--set") -> tuple[str, ...]:
    """Check that `dotted` names a recipe field; return its parts."""
    parts = tuple(dotted.split("."))
    if not dotted or any(not p for p in parts):
        raise CftError(f"{origin} {dotted!r}: expected a dotted field path such as routing.temperature.")
    model: Any = Recipe
    for depth, part in enumerate(parts):
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            # inside a free-form mapping (e.g. data.task_kinds.<task>): any key goes
            if _is_mapping_field(model):
                return parts
            raise CftError(f"{origin} {dotted}: `{'.'.join(parts[:depth])}` is a value, not a section.")
        if part not in model.model_fields:
            names = list(model.model_fields)
            close = difflib.get_close_matches(part, names, n=1)
            where = ".".join(parts[:depth]) or "the recipe"
            raise CftError(
                f"{origin} {dotted}: {where} has no field `{part}`"
                + (f" (did you mean `{close[0]}`?)" if close else "")
                + f". Valid fields: {', '.join(names)}."
            )
        sub = _model_of(model, part)
        model = sub if sub is not None else model.model_fields[part].annotation
    return parts


def _is_mapping_field(annotation: Any) -> bool:
    return get_origin(annotation) is dict


def parse_override(text: str, origin: str = "--set") -> tuple[tuple[str, ...], Any]:
    if "=" not in text:
        raise CftError(f"{origin} {text!r}: expected key.path=value, e.g. {origin} routing.temperature=0.5.")
    key, value_text = text.split("=", 1)
    parts = check_key_path(key.strip(), origin)
    try:
        value = yaml.safe_load(value_text) if value_text.strip() else None
    except (yaml.YAMLError, ValueError, TypeError, RecursionError):
        value = value_text  # keep as a plain string; validation will judge it
    return parts, value


def apply_override(raw: dict, parts: tuple[str, ...], value: Any) -> None:
    node = raw
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[parts[-1]] = value


# --------------------------------------------------------------------------- entry point


def load_recipe(path: str | os.PathLike, sets: Optional[list[str]] = None) -> Recipe:
    """Load, override and validate a recipe file; CftError lists every problem at once."""
    raw, lines = read_yaml_file(path)
    for text in sets or []:
        parts, value = parse_override(text)
        apply_override(raw, parts, value)
        lines.pop(parts, None)  # the value no longer comes from that line
    recipe = validate_raw(raw, str(path), lines)
    if recipe.output_dir is None:
        recipe.output_dir = str(Path("runs") / Path(path).stem)
    return recipe


def recipe_to_yaml(recipe: Recipe) -> str:
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False)


def resolve_data_root(cli_root: Optional[str], recipe_root: Optional[str]) -> Path:
    """Precedence: --data-root, then CFT_DATA_ROOT, then the recipe's data.root, then '.'."""
    for candidate in (cli_root, os.environ.get("CFT_DATA_ROOT"), recipe_root):
        if candidate:
            return Path(candidate).expanduser()
    return Path(".")
