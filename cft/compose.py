"""`cft compose`: bundles trained separately become one bundle that predicts all of their tasks.

Route mode (the default) keeps every adapter. The parts of the sources are concatenated (a
source that is itself composed contributes its parts, flattened), each part keeps its task
embeddings, keys, query, own relation and heads, and the adapters of each insertion layer are
the union of the parts' adapters, grouped by source. Every part's adapters are copied into a
bank of the largest rank (smaller ranks zero-padded: exact, since phi(0) = 0 for every
activation cft offers), with the source's adapter scale folded into V so the result has scale 1.
With `compose_steps = 0` (or `compose_mix = 0`) the composed bundle reproduces each source
exactly; with k > 0 the composed prior A decides the cross-bundle routes (cft/routing.py): by
default (`residual`) each task keeps its own route and gives a mix-scaled share of its route mass
to the adapters that its linked tasks in other bundles use; `propagate` is DESIGN.md's reference
R = gate(rownorm(A_hat^k blockdiag(R_1, ..., R_P))). Embedding spaces of separate runs are not
comparable, so cross-bundle sharing comes from the graph alone.

Merge modes (`linear`, `svd`, `cat`) instead collapse everything into a single adapter per layer,
the way PEFT's `add_weighted_adapter` combines LoRA adapters. Adapter i of source s gets the
coefficient c = w_s * mean_t R_s[t, i] * scale_s (its mean route over the source's tasks times the
source's --weights entry); then
- `cat`: U = [U_i] stacked along the rank, V = [c_i V_i]: exact for that averaged mixture, for any
  elementwise activation (PEFT puts the weight on A instead, which is the same for identity);
- `linear`: U = sum sqrt(c_i) U_i, V = sum sqrt(c_i) V_i, as PEFT does (equal ranks, c_i >= 0);
- `svd`: the weighted delta sum c_i V_i U_i, truncated by SVD to the largest rank (PEFT's
  default), which is a function of the delta only for the identity activation.

Nothing is written before every check has passed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from cft.backbone import Backbone
from cft.bundle import BundleInfo, bundle_hash, bundle_label, load_bundle_shell, resolve_bundle_path, save_bundle
from cft.console import info as say, warn
from cft.errors import CftError
from cft.model import CftModel, ModelSpec
from cft.prior import check_relation, read_relation
from cft.routing import PartSpec, _block_diagonal

MODES = ("route", "linear", "svd", "cat")
DEFAULT_COMPOSE_STEPS = 1
DEFAULT_COMPOSE_THRESHOLD = 0.1
DEFAULT_COMPOSE_RULE = "residual"
DEFAULT_COMPOSE_MIX = 0.02  # measured on tox21: the largest per-task ROC-AUC change stays under 0.005 (docs/composition.md)


@dataclass
class Source:
    """One bundle given to compose, loaded without its backbone."""

    path: Path
    info: BundleInfo
    model: CftModel
    sha256: str
    label: str
    tasks: list[str]  # after --rename

    @property
    def spec(self) -> ModelSpec:
        return self.info.spec


@dataclass
class PriorChoice:
    matrix: np.ndarray
    description: dict
    warning: Optional[str] = None


@dataclass
class Composition:
    model: CftModel
    fingerprint: str
    data: dict
    metrics: dict
    provenance: dict
    sources: list[Source] = field(default_factory=list)

    def save(self, path: str | Path) -> None:
        save_bundle(path, self.model, data=self.data, metrics=self.metrics, provenance=self.provenance, fingerprint=self.fingerprint)


# --------------------------------------------------------------------------- inputs


def load_sources(targets: Sequence[str | Path]) -> list[Source]:
    if len(targets) < 1:
        raise CftError("cft compose needs at least one bundle.")
    sources = []
    for target in targets:
        path = resolve_bundle_path(target)
        model, info = load_bundle_shell(path)
        sources.append(Source(path=path, info=info, model=model, sha256=bundle_hash(path), label=bundle_label(path), tasks=list(info.spec.tasks)))
    _dedupe_labels(sources)
    return sources


def _dedupe_labels(sources: list[Source]) -> None:
    seen: dict[str, int] = {}
    for s in sources:
        n = seen.get(s.label, 0)
        seen[s.label] = n + 1
        if n:
            s.label = f"{s.label}#{n + 1}"


def parse_renames(texts: Sequence[str]) -> list[tuple[Optional[int], str, str]]:
    out = []
    for text in texts:
        position: Optional[int] = None
        body = text
        head, sep, rest = text.partition(":")
        if sep and head.strip().isdigit() and "=" in rest:
            position, body = int(head), rest
        old, eq, new = body.partition("=")
        if not eq or not old.strip() or not new.strip():
            raise CftError(f"--rename {text!r}: expected OLD=NEW or N:OLD=NEW (N = the bundle's position, 1-based).")
        out.append((position, old.strip(), new.strip()))
    return out


def apply_renames(sources: list[Source], renames: Sequence[str]) -> None:
    """`N:OLD=NEW` renames OLD in bundle N; `OLD=NEW` renames it in every bundle after the first
    that holds it (or in the only one that does)."""
    for position, old, new in parse_renames(renames):
        holders = [i for i, s in enumerate(sources) if old in s.tasks]
        if position is not None:
            if not 1 <= position <= len(sources):
                raise CftError(f"--rename {position}:{old}={new}: there are {len(sources)} bundles (positions 1 to {len(sources)}).")
            targets = [position - 1]
            if old not in sources[position - 1].tasks:
                raise CftError(
                    f"--rename {position}:{old}={new}: bundle {position} ({sources[position - 1].path}) has no task {old!r}.",
                    hint=f"Its tasks: {', '.join(sources[position - 1].tasks[:12])}{' ...' if len(sources[position - 1].tasks) > 12 else ''}.",
                )
        else:
            if not holders:
                raise CftError(f"--rename {old}={new}: no bundle has a task {old!r}.")
            targets = holders[1:] if len(holders) > 1 else holders
        for i in targets:
            sources[i].tasks = [new if t == old else t for t in sources[i].tasks]


def check_compatible(sources: list[Source]) -> None:
    """Same backbone, same adapter activation, unique task names."""
    first = sources[0]
    for s in sources[1:]:
        if s.info.backbone_fingerprint != first.info.backbone_fingerprint:
            raise CftError(
                f"{s.path} was trained on backbone {s.info.backbone_fingerprint}, but {first.path} on backbone "
                f"{first.info.backbone_fingerprint}; bundles compose only over the same frozen backbone.",
                hint="Train both with the same backbone.path (or pretrain settings).",
            )
    with_adapters = [s for s in sources if any(p.layers for p in s.spec.parts)]
    for s in with_adapters[1:]:
        a = with_adapters[0]
        if s.spec.activation != a.spec.activation:
            raise CftError(
                f"{s.path} uses adapter activation {s.spec.activation!r} but {a.path} uses {a.spec.activation!r}; "
                "one composed bank has one activation.",
                hint="Train the bundles with the same adapters.activation.",
            )
    owner: dict[str, int] = {}
    for i, s in enumerate(sources):
        for t in s.tasks:
            if t in owner:
                j = owner[t]
                where = f"bundles {j + 1} ({sources[j].path}) and {i + 1} ({s.path})" if j != i else f"bundle {i + 1} ({s.path}), twice"
                raise CftError(
                    f"Task name {t!r} occurs in {where}; a composed bundle needs unique task names.",
                    hint=f"Rename one, e.g. --rename {i + 1}:{t}={t}_{s.label}.",
                )
            owner[t] = i


def union_tasks(sources: list[Source]) -> list[str]:
    return [t for s in sources for t in s.tasks]


def source_relation(source: Source) -> np.ndarray:
    """The relation over a source's tasks (its union prior, or its single part's, learned or not)."""
    return source.model.router.union_relation().detach().cpu().numpy().astype(np.float32)


# --------------------------------------------------------------------------- the prior


def choose_prior(
    sources: list[Source],
    tasks: list[str],
    *,
    prior: Optional[str] = None,
    prior_from: Optional[str] = None,
    data_root: Path = Path("."),
    method: str = "phi",
    min_support: int = 20,
    min_value: float = 0.1,
    top_k: Optional[int] = None,
) -> PriorChoice:
    if prior and prior_from:
        raise CftError("Give either --prior FILE or --prior-from DATA, not both.")
    if prior:
        matrix = read_relation(prior, tasks)
        return PriorChoice(matrix, {"source": "file", "path": str(prior)})
    if prior_from:
        from cft.prior import relation_from_dataset

        matrix, details = relation_from_dataset(
            prior_from, tasks, data_root, base=sources[0].info.data.get("config"), seed=int(sources[0].info.provenance.get("seed", 0)),
            method=method, min_support=min_support, min_value=min_value, top_k=top_k,
        )
        return PriorChoice(matrix, {"source": "labels", **details})
    matrix = _block_diagonal([source_relation(s) for s in sources])
    message = None
    if len(sources) > 1:
        message = (
            "no --prior or --prior-from: the composed prior is the bundles' own relation matrices, block-diagonal, so no task "
            "is linked to another bundle's tasks and routing never crosses bundles. Pass --prior-from DATA (training labels "
            "covering all tasks) or --prior FILE for cross-bundle sharing."
        )
    return PriorChoice(check_relation(matrix, len(tasks), "block-diagonal prior"), {"source": "block-diagonal"}, message)


# --------------------------------------------------------------------------- route mode


def _flattened_parts(sources: list[Source]) -> list[tuple[Source, int, PartSpec]]:
    """(source, part index in the source, renamed part spec) for every part of every source."""
    out = []
    for s in sources:
        start = 0
        for g, p in enumerate(s.spec.parts):
            renamed = s.tasks[start : start + len(p.tasks)]
            start += len(p.tasks)
            name = s.label if len(s.spec.parts) == 1 else p.name
            extra = {**p.extra, "source": s.label}
            out.append((s, g, replace(p, name=name, tasks=list(renamed), source_hash=p.source_hash or s.sha256, extra=extra)))
    names: dict[str, int] = {}
    for i, (s, g, p) in enumerate(out):
        n = names.get(p.name, 0)
        names[p.name] = n + 1
        if n:
            out[i] = (s, g, replace(p, name=f"{p.name}#{n + 1}"))
    return out


def _effective_rank(source: Source, g: int, part: PartSpec) -> int:
    """The part's rank, or the source bank's rank when its padding rows were trained (not zero)."""
    model, r = source.model, part.rank
    for layer in part.layers:
        bank = model.adapters[str(layer)]
        off = model.router.adapter_offsets[g][layer]
        if bank.rank > r and (bank.U[off : off + part.num_adapters, r:].abs().sum() > 0 or bank.V[off : off + part.num_adapters, :, r:].abs().sum() > 0):
            return bank.rank
    return r


def compose_route(
    sources: list[Source], union: np.ndarray, compose_steps: int, compose_threshold: float,
    compose_rule: str = DEFAULT_COMPOSE_RULE, compose_mix: float = DEFAULT_COMPOSE_MIX,
) -> CftModel:
    flat = _flattened_parts(sources)
    parts = []
    for s, g, p in flat:
        parts.append(replace(p, rank=_effective_rank(s, g, p)) if p.layers else p)
    tasks = [t for p in parts for t in p.tasks]
    kinds = [k for s in sources for k in s.spec.kinds]
    activation = next((s.spec.activation for s in sources if any(p.layers for p in s.spec.parts)), sources[0].spec.activation)
    spec = ModelSpec(
        backbone=sources[0].spec.backbone, tasks=tasks, kinds=kinds, parts=parts, activation=activation, scale=1.0,
        adapter_dropout=0.0, compose_steps=compose_steps if len(parts) > 1 else 0, compose_threshold=compose_threshold,
        compose_rule=compose_rule, compose_mix=compose_mix,
    )
    part_relations = [s.model.router.parts[g].relation.detach().cpu().numpy() for s, g, _ in flat]
    model = _new_model(spec, part_relations, union)
    state = {k: v.clone() for k, v in model.bundle_state().items()}
    for key in state:
        if key.startswith("adapters."):
            state[key].zero_()
    for new_g, ((s, g, _), part) in enumerate(zip(flat, parts)):
        src_state = s.model.bundle_state()
        prefix = f"router.parts.{g}."
        for key, value in src_state.items():
            if key.startswith(prefix):
                state[f"router.parts.{new_g}." + key[len(prefix):]] = value.clone()
        for layer in part.layers:
            k, r = part.num_adapters, part.rank
            src_off = s.model.router.adapter_offsets[g][layer]
            dst_off = model.router.adapter_offsets[new_g][layer]
            state[f"adapters.{layer}.U"][dst_off : dst_off + k, :r] = src_state[f"adapters.{layer}.U"][src_off : src_off + k, :r]
            state[f"adapters.{layer}.V"][dst_off : dst_off + k, :, :r] = src_state[f"adapters.{layer}.V"][src_off : src_off + k, :, :r] * s.spec.scale
    _copy_heads(state, sources)
    state["router.relation"] = torch.as_tensor(union, dtype=torch.float32)
    model.load_state_dict(state, strict=False)
    return model


def _new_model(spec: ModelSpec, part_relations: list[np.ndarray], union: np.ndarray) -> CftModel:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return CftModel(Backbone(spec.backbone), spec, part_relations, union)


# --------------------------------------------------------------------------- merge modes


def _components(source: Source, layer: int, weight: float) -> list[tuple[float, torch.Tensor, torch.Tensor]]:
    """(coefficient, U_i [r, d], V_i [d, r]) for each adapter of the source at `layer`."""
    model = source.model
    routes = model.router.routes()
    if layer not in routes:
        return []
    mean_route = routes[layer].detach().mean(dim=0)
    bank = model.adapters[str(layer)]
    out = []
    for g, part in enumerate(source.spec.parts):
        if layer not in part.layers:
            continue
        r = _effective_rank(source, g, part)
        off = model.router.adapter_offsets[g][layer]
        for i in range(part.num_adapters):
            c = float(weight * mean_route[off + i] * source.spec.scale)
            out.append((c, bank.U[off + i, :r].detach().clone(), bank.V[off + i, :, :r].detach().clone()))
    return out


def merge_layer(components: list[tuple[float, torch.Tensor, torch.Tensor]], mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """One adapter (U [R, d], V [d, R]) standing for the weighted components."""
    if mode == "cat":
        kept = [(c, u, v) for c, u, v in components if c != 0.0]
        if not kept:
            kept = components[:1]
            return torch.zeros_like(kept[0][1][:1]), torch.zeros_like(kept[0][2][:, :1])
        return torch.cat([u for _, u, _ in kept], dim=0), torch.cat([c * v for c, _, v in kept], dim=1)
    if mode == "linear":
        u = sum(math.sqrt(c) * u for c, u, _ in components)
        v = sum(math.sqrt(c) * v for c, _, v in components)
        return u, v
    if mode == "svd":
        delta = sum(c * (v @ u) for c, u, v in components)  # [d, d]
        rank = max(u.size(0) for _, u, _ in components)
        left, sing, right = torch.linalg.svd(delta.double(), full_matrices=False)
        return right[:rank].float().contiguous(), (left[:, :rank] * sing[:rank]).float().contiguous()
    raise CftError(f"unknown merge mode {mode!r}")


def _copy_heads(state: dict, sources: Sequence[Source]) -> None:
    """Each source's task heads, unchanged, in the rows of its tasks (sources in order)."""
    offset = 0
    for s in sources:
        src_state = s.model.bundle_state()
        n = len(s.tasks)
        state["head.weight"][offset : offset + n] = src_state["head.weight"]
        state["head.bias"][offset : offset + n] = src_state["head.bias"]
        offset += n


def compose_merge(sources: list[Source], union: np.ndarray, mode: str, weights: list[float]) -> CftModel:
    activation = next((s.spec.activation for s in sources if any(p.layers for p in s.spec.parts)), sources[0].spec.activation)
    if mode == "svd" and activation != "identity":
        raise CftError(
            f"--mode svd merges the weight deltas V U, which describe an adapter only when its activation is identity; "
            f"these bundles use {activation!r}.",
            hint="Use --mode cat (exact for any activation) or --mode route.",
        )
    if mode == "linear":
        ranks = sorted({_effective_rank(s, g, p) for s in sources for g, p in enumerate(s.spec.parts) if p.layers})
        if len(ranks) > 1:
            raise CftError(f"--mode linear needs adapters of one rank (as PEFT does); these have ranks {ranks}.", hint="Use --mode cat or svd.")
        if any(w < 0 for w in weights):
            raise CftError("--mode linear takes square roots of the weights (as PEFT does); give non-negative --weights.", hint="Use --mode cat or svd for negative weights.")
    layers = sorted({layer for s in sources for p in s.spec.parts for layer in p.layers})
    merged = {}
    for layer in layers:
        comps = [c for s, w in zip(sources, weights) for c in _components(s, layer, w)]
        merged[layer] = merge_layer(comps, mode)
    rank = max((u.size(0) for u, _ in merged.values()), default=1)
    tasks = union_tasks(sources)
    part = PartSpec(
        name="merged", tasks=tasks, layers=layers, num_adapters=1, rank=rank, embed_dim=1, mode="uniform", prior_steps=0,
        prior_source="composed", extra={"merge": mode, "sources": [s.label for s in sources]},
    )
    spec = ModelSpec(
        backbone=sources[0].spec.backbone, tasks=tasks, kinds=[k for s in sources for k in s.spec.kinds], parts=[part],
        activation=activation, scale=1.0, adapter_dropout=0.0,
    )
    model = _new_model(spec, [union], union)
    state = {k: v.clone() for k, v in model.bundle_state().items()}
    for layer, (u, v) in merged.items():
        r = u.size(0)
        state[f"adapters.{layer}.U"].zero_()[0, :r] = u
        state[f"adapters.{layer}.V"].zero_()[0, :, :r] = v
    # a uniform part has no router parameters; should it ever gain some, they must not carry over
    for key in state:
        if key.startswith("router.parts.0."):
            state[key].zero_()
    _copy_heads(state, sources)
    state["router.relation"] = torch.as_tensor(union, dtype=torch.float32)
    state["router.parts.0.relation"] = torch.as_tensor(union, dtype=torch.float32)
    model.load_state_dict(state, strict=False)
    return model


# --------------------------------------------------------------------------- metadata


def _shared_data(sources: list[Source], tasks: list[str]) -> dict:
    """The composed bundle's data identity: the parts' common CSV/split (so `cft eval` works
    without --data) when they all share one, else only the list of their sources."""
    configs = [dict(s.info.data.get("config") or {}) for s in sources]
    files = [(s.info.data.get("source"), s.info.data.get("path"), s.info.data.get("sha256"), s.info.data.get("name")) for s in sources]
    strip = lambda c: {k: v for k, v in c.items() if k != "tasks"}  # noqa: E731
    if all(configs) and all(strip(c) == strip(configs[0]) for c in configs) and len(set(files)) == 1:
        first = sources[0].info.data
        out = {k: v for k, v in first.items() if k not in ("tasks", "config")}
        out["tasks"] = list(tasks)
        out["config"] = {**configs[0], "tasks": list(tasks)}
        return out
    return {"sources": [{k: v for k, v in s.info.data.items() if k != "config"} for s in sources]}


def compose(
    targets: Sequence[str | Path],
    *,
    mode: str = "route",
    prior: Optional[str] = None,
    prior_from: Optional[str] = None,
    data_root: Path = Path("."),
    weights: Optional[Sequence[float]] = None,
    renames: Sequence[str] = (),
    compose_steps: int = DEFAULT_COMPOSE_STEPS,
    compose_threshold: float = DEFAULT_COMPOSE_THRESHOLD,
    compose_rule: str = DEFAULT_COMPOSE_RULE,
    compose_mix: float = DEFAULT_COMPOSE_MIX,
    method: str = "phi",
    min_support: int = 20,
    min_value: float = 0.1,
    top_k: Optional[int] = None,
) -> Composition:
    """Check and compose bundles in memory; `Composition.save` writes the result."""
    if mode not in MODES:
        raise CftError(f"--mode {mode!r}: choose one of {', '.join(MODES)}.")
    if compose_steps < 0:
        raise CftError(f"--compose-steps must be >= 0, got {compose_steps}.")
    if not 0.0 <= compose_threshold < 1.0:
        raise CftError(f"--compose-threshold must be in [0, 1), got {compose_threshold}.")
    from cft.routing import COMPOSE_RULES

    if compose_rule not in COMPOSE_RULES:
        raise CftError(f"--compose-rule {compose_rule!r}: choose one of {', '.join(COMPOSE_RULES)}.")
    if not 0.0 <= compose_mix <= 1.0:
        raise CftError(f"--compose-mix must be in [0, 1], got {compose_mix}.")
    sources = load_sources(targets)
    apply_renames(sources, renames)
    check_compatible(sources)
    if mode == "route" and weights is not None:
        raise CftError("--weights applies to the merge modes (linear, svd, cat); --mode route keeps every adapter.")
    weights = [1.0] * len(sources) if weights is None else [float(w) for w in weights]
    if len(weights) != len(sources):
        raise CftError(f"--weights has {len(weights)} values for {len(sources)} bundles; give one per bundle.")
    if any(not math.isfinite(w) for w in weights):
        raise CftError("--weights must be finite numbers.")
    tasks = union_tasks(sources)
    choice = choose_prior(
        sources, tasks, prior=prior, prior_from=prior_from, data_root=data_root,
        method=method, min_support=min_support, min_value=min_value, top_k=top_k,
    )
    if choice.warning:
        warn(choice.warning)
    if mode == "route":
        model = compose_route(sources, choice.matrix, compose_steps, compose_threshold, compose_rule, compose_mix)
    else:
        model = compose_merge(sources, choice.matrix, mode, weights)
    metric_names = {s.info.metrics.get("metric") for s in sources}
    metrics = {"metric": metric_names.pop()} if len(metric_names) == 1 and None not in metric_names else {}
    provenance = {
        "kind": "composed",
        "mode": mode,
        "sources": [
            {"path": str(s.path), "sha256": s.sha256, "label": s.label, "tasks": s.tasks,
             **({"renamed_from": list(s.info.spec.tasks)} if s.tasks != list(s.info.spec.tasks) else {}),
             "metrics": s.info.metrics}
            for s in sources
        ],
        "source_paths": [str(s.path.resolve()) for s in sources],
        "prior": choice.description,
        "seed": int(sources[0].info.provenance.get("seed", 0)),
    }
    if mode == "route":
        provenance.update({
            "compose_steps": model.spec.compose_steps, "compose_threshold": compose_threshold, "compose_rule": compose_rule,
            "compose_mix": compose_mix,
        })
    else:
        provenance["weights"] = weights
    return Composition(
        model=model, fingerprint=sources[0].info.backbone_fingerprint, data=_shared_data(sources, tasks), metrics=metrics,
        provenance=provenance, sources=sources,
    )


# --------------------------------------------------------------------------- calibration


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

    from cft.bundle import find_backbone_path, load_bundle, read_bundle_info
    from cft.recipe import apply_override, parse_override, read_yaml_file, resolve_data_root, validate_raw
    from cft.train import train_recipe

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
