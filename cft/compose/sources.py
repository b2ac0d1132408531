"""The bundles given to `cft compose`: loading, renaming tasks, compatibility, the union of their
tasks and the prior over it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from scipy.linalg import block_diag

from cft.errors import CftError
from cft.files.bundle import (
    BundleInfo,
    bundle_hash,
    bundle_label,
    load_bundle_shell,
    resolve_bundle_path,
)
from cft.nn.model import CftModel
from cft.prior.files import read_relation
from cft.prior.relation import check_relation
from cft.prior.sources import relation_from_dataset
from cft.spec import ModelSpec


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
    """Same backbone, same adapter activation and placement, unique task names."""
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
        if s.spec.placement != a.spec.placement:
            raise CftError(
                f"{s.path} places its adapters at {s.spec.placement!r} but {a.path} at {a.spec.placement!r} "
                "(adapters.placement); one composed model applies its adapters at one place.",
                hint="Train the bundles with the same adapters.placement.",
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


def check_readouts(sources: list[Source]) -> None:
    """Route mode keeps every adapter, so the composed model has one read-out: the bundles with
    adapters must share theirs (the merge modes fold the adapters into one and need not); under the
    task read-out their experts (the adapters of each part's last insertion layer) must sit at one
    layer, the composed model's last insertion layer, or a part's tasks would read other experts."""
    with_adapters = [s for s in sources if any(p.layers for p in s.spec.parts)]
    if not with_adapters:
        return
    first = with_adapters[0]
    for s in with_adapters[1:]:
        if s.spec.readout != first.spec.readout:
            raise CftError(
                f"{s.path} reads its adapters with routing.readout {s.spec.readout!r} but {first.path} with {first.spec.readout!r}; "
                "a composed bundle has one read-out.",
                hint="Train both with the same routing.readout (bundles written before the field existed use `mixture`), or merge them with --mode cat.",
            )
    if first.spec.readout != "task":
        return
    last = {(s.path, p.name): max(p.layers) for s in with_adapters for p in s.spec.parts if p.layers}
    if len(set(last.values())) > 1:
        listing = ", ".join(f"{path} ({name}): layer {layer}" for (path, name), layer in last.items())
        raise CftError(
            f"Under routing.readout task each part's experts are the adapters of its last insertion layer, and these differ ({listing}); "
            "a composed bundle reads every part's experts at one layer.",
            hint="Train the bundles with the same last entry in adapters.layers, or merge them with --mode cat.",
        )


def union_tasks(sources: list[Source]) -> list[str]:
    return [t for s in sources for t in s.tasks]


def source_relation(source: Source) -> np.ndarray:
    """The relation over a source's tasks (its union prior, or its single part's, learned or not)."""
    return source.model.router.union_relation().detach().cpu().numpy().astype(np.float32)


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
        matrix, details = relation_from_dataset(
            prior_from, tasks, data_root, base=sources[0].info.data.get("config"), seed=int(sources[0].info.provenance.get("seed", 0)),
            method=method, min_support=min_support, min_value=min_value, top_k=top_k,
        )
        return PriorChoice(matrix, {"source": "labels", **details})
    matrix = block_diag(*[source_relation(s) for s in sources]).astype(np.float32)
    message = None
    if len(sources) > 1:
        message = (
            "no --prior or --prior-from: the composed prior is the bundles' own relation matrices, block-diagonal, so no task "
            "is linked to another bundle's tasks and routing never crosses bundles. Pass --prior-from DATA (training labels "
            "covering all tasks) or --prior FILE for cross-bundle sharing."
        )
    return PriorChoice(check_relation(matrix, len(tasks), "block-diagonal prior"), {"source": "block-diagonal"}, message)


def shared_data(sources: list[Source], tasks: list[str]) -> dict:
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
