"""Assembling the composed model: route mode keeps every part and adapter; the merge modes fold
each layer's adapters into one with `cft.compose.merge`.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from cft.compose.merge import merge_layer
from cft.compose.sources import Source, union_tasks
from cft.errors import CftError
from cft.nn.backbone import Backbone
from cft.nn.model import CftModel, bank_names
from cft.spec import ModelSpec, PartSpec, concatenated_target_affine

MODES = ("route", "linear", "svd", "cat")
DEFAULT_COMPOSE_STEPS = 1
DEFAULT_COMPOSE_THRESHOLD = 0.1
DEFAULT_COMPOSE_RULE = "residual"
DEFAULT_COMPOSE_MIX = 0.05  # chosen on Tox21's validation split: the largest mix whose per-task ROC-AUC change stays within 0.005 (docs/composition.md)


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
            out.append((s, g, p.model_copy(update={"name": name, "tasks": list(renamed), "source_hash": p.source_hash or s.sha256, "extra": extra})))
    names: dict[str, int] = {}
    for i, (s, g, p) in enumerate(out):
        n = names.get(p.name, 0)
        names[p.name] = n + 1
        if n:
            out[i] = (s, g, p.model_copy(update={"name": f"{p.name}#{n + 1}"}))
    return out


# banks whose width is a ModelSpec field of their own, not the parts' rank:
# bank -> (the field, the spec property that resolves it, what an error calls the bank)
OWN_WIDTH = {
    "vn_adapters": ("virtual_node_rank", "virtual_node_bank_rank", "virtual-node banks"),
    "vn_out_adapters": ("virtual_node_rank", "virtual_node_bank_rank", "virtual-node banks"),
    "embedding_adapters": ("embeddings_rank", "embedding_bank_rank", "embeddings' banks"),
}


def _own_width(spec: ModelSpec, name: str) -> int | None:
    """The width of bank `name` in a model of `spec` where it has one of its own (`OWN_WIDTH`), else None."""
    return getattr(spec, OWN_WIDTH[name][1]) if name in OWN_WIDTH else None


def _source_widths(sources: Sequence[Source]) -> list[tuple[str, int]]:
    """(bank, width) for every bank with a width of its own that an adapted source has."""
    return [(name, _own_width(s.spec, name)) for s in sources if any(p.layers for p in s.spec.parts)
            for name in s.model.adapter_banks() if name in OWN_WIDTH]


def _own_ranks(widths: list[tuple[str, int]], rank: int) -> dict:
    """The composed spec's width fields (`virtual_node_rank`, `embeddings_rank`) from the (bank,
    width) pairs of what it holds: each the widest, so every source's columns fit; None (the
    parts' rank) where that is `rank`, or where no source has the bank."""
    widest: dict[str, int] = {}
    for name, width in widths:
        field = OWN_WIDTH[name][0]
        widest[field] = max(widest.get(field, 0), width)
    return {field: None if width == rank else width for field, width in widest.items()}


def _effective_rank(source: Source, g: int, part: PartSpec) -> int:
    """The part's rank, or the source bank's rank when its padding rows were trained (not zero);
    the banks with a width of their own (`OWN_WIDTH`) do not count."""
    model, r = source.model, part.rank
    for layer in part.layers:
        off = model.router.adapter_offsets[g][layer]
        for name, banks in model.adapter_banks().items():
            if name in OWN_WIDTH or str(layer) not in banks:
                continue
            bank = banks[str(layer)]
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
        parts.append(p.model_copy(update={"rank": _effective_rank(s, g, p)}) if p.layers else p)
    tasks = [t for p in parts for t in p.tasks]
    kinds = [k for s in sources for k in s.spec.kinds]
    adapted = [s for s in sources if any(p.layers for p in s.spec.parts)]
    activation = adapted[0].spec.activation if adapted else sources[0].spec.activation
    # one read-out (check_readouts made the adapted sources agree); parts without adapters read
    # the unadapted representation under either
    readout = adapted[0].spec.readout if adapted else sources[0].spec.readout
    spec = ModelSpec(
        backbone=sources[0].spec.backbone, tasks=tasks, kinds=kinds, parts=parts, activation=activation, placement=_placement(sources), scale=1.0,
        adapter_dropout=0.0, compose_steps=compose_steps if len(parts) > 1 else 0, compose_threshold=compose_threshold,
        compose_rule=compose_rule, compose_mix=compose_mix, readout=readout, virtual_node_adapters=_virtual_node(sources),
        embedding_adapters=_embeddings(sources), **_own_ranks(_source_widths(sources), max((p.rank for p in parts if p.layers), default=0)),
        **concatenated_target_affine([s.spec for s in sources]),
    )
    part_relations = [s.model.router.parts[g].relation.detach().cpu().numpy() for s, g, _ in flat]
    model = _new_model(spec, part_relations, union)
    names = list(model.adapter_banks())  # `adapters`, `out_adapters` for mlp-both, `vn_adapters`, `vn_out_adapters`, `embedding_adapters`
    state = {k: v.clone() for k, v in model.bundle_state().items()}
    for key in state:
        if key.split(".", 1)[0] in names:
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
            for name in names:
                if f"{name}.{layer}.U" not in src_state:  # a source without virtual-node banks (or the last layer): its rows stay zero
                    continue
                w = _own_width(s.spec, name) or r  # columns this part holds in the bank
                state[f"{name}.{layer}.U"][dst_off : dst_off + k, :w] = src_state[f"{name}.{layer}.U"][src_off : src_off + k, :w]
                state[f"{name}.{layer}.V"][dst_off : dst_off + k, :, :w] = src_state[f"{name}.{layer}.V"][src_off : src_off + k, :, :w] * s.spec.scale
    _copy_heads(state, sources)
    state["router.relation"] = torch.as_tensor(union, dtype=torch.float32)
    model.load_state_dict(state, strict=False)
    return model


def _placement(sources: list[Source]) -> str:
    """Where the composed adapters act: the adapted sources' one placement (check_compatible made
    them agree); sources without adapters have nothing to place."""
    adapted = [s for s in sources if any(p.layers for p in s.spec.parts)]
    return adapted[0].spec.placement if adapted else "output"


def _virtual_node(sources: list[Source]) -> bool:
    """Whether the composed model has banks on the virtual node's MLP: when any source has them (a
    source without them leaves its rows there zero: no update, as it was trained)."""
    return any(s.spec.virtual_node_adapters for s in sources if any(p.layers for p in s.spec.parts))


def _embeddings(sources: list[Source]) -> bool:
    """Whether the composed model has a bank on the atom embeddings: when any source has one (the
    rows of a source without one stay zero; such a source's parts at layer 0 get rows there too)."""
    return any(s.spec.embedding_adapters for s in sources if any(p.layers for p in s.spec.parts))


def _new_model(spec: ModelSpec, part_relations: list[np.ndarray], union: np.ndarray) -> CftModel:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return CftModel(Backbone(spec.backbone), spec, part_relations, union)


def _components(source: Source, layer: int, weight: float, name: str = "adapters") -> list[tuple[float, torch.Tensor, torch.Tensor]]:
    """(coefficient, U_i [r, d], V_i [d, r]) for each adapter of the source's bank `name` at `layer`."""
    model = source.model
    routes = model.router.routes()
    banks = model.adapter_banks().get(name, {})
    if layer not in routes or str(layer) not in banks:  # no adapters here, or no virtual-node bank (none trained, or the last layer)
        return []
    mean_route = routes[layer].detach().mean(dim=0)
    bank = banks[str(layer)]
    out = []
    for g, part in enumerate(source.spec.parts):
        if layer not in part.layers:
            continue
        r = _own_width(source.spec, name) or _effective_rank(source, g, part)
        off = model.router.adapter_offsets[g][layer]
        for i in range(part.num_adapters):
            c = float(weight * mean_route[off + i] * source.spec.scale)
            out.append((c, bank.U[off + i, :r].detach().clone(), bank.V[off + i, :, :r].detach().clone()))
    return out


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
        own: dict[str, set[int]] = {}  # what an error calls the bank -> the sources' widths of it
        for name, width in _source_widths(sources):
            own.setdefault(OWN_WIDTH[name][2], set()).add(width)
        for what, widths in own.items():
            if len(widths) > 1:
                raise CftError(f"--mode linear needs adapters of one rank (as PEFT does); these bundles' {what} have ranks {sorted(widths)}.", hint="Use --mode cat or svd.")
        if any(w < 0 for w in weights):
            raise CftError("--mode linear takes square roots of the weights (as PEFT does); give non-negative --weights.", hint="Use --mode cat or svd for negative weights.")
    layers = sorted({layer for s in sources for p in s.spec.parts for layer in p.layers})
    names = bank_names(_placement(sources), _virtual_node(sources), _embeddings(sources))
    merged = {}  # each bank of a layer merged on its own, with the same coefficients (mlp-both: both banks)
    for layer in layers:
        for name in names:
            comps = [c for s, w in zip(sources, weights) for c in _components(s, layer, w, name)]
            if comps:  # a virtual-node bank no source has at this layer stays zero
                merged[name, layer] = merge_layer(comps, mode)
    rank = max((u.size(0) for (name, _), (u, _) in merged.items() if name not in OWN_WIDTH), default=1)
    tasks = union_tasks(sources)
    part = PartSpec(
        name="merged", tasks=tasks, layers=layers, num_adapters=1, rank=rank, embed_dim=1, mode="uniform", prior_steps=0,
        prior_source="composed", extra={"merge": mode, "sources": [s.label for s in sources]},
    )
    spec = ModelSpec(
        backbone=sources[0].spec.backbone, tasks=tasks, kinds=[k for s in sources for k in s.spec.kinds], parts=[part],
        activation=activation, placement=_placement(sources), scale=1.0, adapter_dropout=0.0, virtual_node_adapters=_virtual_node(sources),
        embedding_adapters=_embeddings(sources), **_own_ranks([(name, u.size(0)) for (name, _), (u, _) in merged.items() if name in OWN_WIDTH], rank),
        **concatenated_target_affine([s.spec for s in sources]),
    )
    model = _new_model(spec, [union], union)
    state = {k: v.clone() for k, v in model.bundle_state().items()}
    for key in state:  # every bank starts at zero: one that merged nothing adds nothing
        if key.split(".", 1)[0] in names:
            state[key].zero_()
    for (name, layer), (u, v) in merged.items():
        r = u.size(0)
        state[f"{name}.{layer}.U"][0, :r] = u
        state[f"{name}.{layer}.V"][0, :, :r] = v
    # a uniform part has no router parameters; should it ever gain some, they must not carry over
    for key in state:
        if key.startswith("router.parts.0."):
            state[key].zero_()
    _copy_heads(state, sources)
    state["router.relation"] = torch.as_tensor(union, dtype=torch.float32)
    state["router.parts.0.relation"] = torch.as_tensor(union, dtype=torch.float32)
    model.load_state_dict(state, strict=False)
    return model
