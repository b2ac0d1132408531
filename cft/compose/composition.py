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
to the adapters that its linked tasks in other bundles use; `propagate` is the reference rule of docs/method.md
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from cft.compose.assemble import (
    DEFAULT_COMPOSE_MIX,
    DEFAULT_COMPOSE_RULE,
    DEFAULT_COMPOSE_STEPS,
    DEFAULT_COMPOSE_THRESHOLD,
    MODES,
    compose_merge,
    compose_route,
)
from cft.compose.sources import (
    Source,
    apply_renames,
    check_compatible,
    check_readouts,
    choose_prior,
    load_sources,
    shared_data,
    union_tasks,
)
from cft.console import warn
from cft.errors import CftError
from cft.files.bundle import (
    save_bundle,
)
from cft.nn.model import CftModel
from cft.spec import COMPOSE_RULES


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
    if compose_rule not in COMPOSE_RULES:
        raise CftError(f"--compose-rule {compose_rule!r}: choose one of {', '.join(COMPOSE_RULES)}.")
    if not 0.0 <= compose_mix <= 1.0:
        raise CftError(f"--compose-mix must be in [0, 1], got {compose_mix}.")
    sources = load_sources(targets)
    apply_renames(sources, renames)
    check_compatible(sources)
    if mode == "route":
        check_readouts(sources)
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
        model=model, fingerprint=sources[0].info.backbone_fingerprint, data=shared_data(sources, tasks), metrics=metrics,
        provenance=provenance, sources=sources,
    )
