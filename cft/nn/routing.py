"""Gated routing between adapters, shaped by the structural prior.

Reference formulation (docs/method.md), per trained part:
- task embeddings E_0 [T, m] are propagated k steps over the normalised prior, with an optional
  restart (APPNP) of weight a: E <- (1 - a) A_hat E + a E_0, so E~ = A_hat^k E_0 when a = 0;
  optionally PairNorm after it (`prior_norm`), against the over-smoothing of a dense prior;
- task routes per insertion layer l: R^l = gate_g(softmax(E~ K_l^T / (tau sqrt(m)))), [T, K];
- per-molecule task relevance, label-free: w(x) = softmax(E~ q(x) / sqrt(m)), q = W_q pool(h);
- per-molecule adapter weights alpha^l(x) = w(x)^T R^l: one forward pass serves all tasks.
- `readout: task` (`cft.nn.model`): the routes of the last insertion layer L* are the per-task
  gates of its adapters, read as experts (task t reads sum_k R^{L*}_tk z_k(x)); alpha is then
  needed only below L*, and the regulariser acts on R^{L*}, which decides each task's path.

A composed model holds several parts (one per source bundle). Their embedding spaces are not
comparable, so sharing across parts comes from the graph, with P = A_hat^k over the composed prior
and B = blockdiag(R_1, ..., R_P) (each part's own routes); each part keeps its own query. Two rules:
- `propagate` (the reference rule of docs/method.md): R = gate_g(rownorm(P B)). It also mixes the routes of
  linked tasks inside a part and gates the parts' own routes, which moved each part's tox21 test
  ROC-AUC by up to 0.05 (docs/composition.md);
- `residual` (what `cft compose` writes): a task keeps its own route and gives a share of its
  route mass to the adapters its linked tasks in other parts use,
  R_t = (1 - s_t) B_t + s_t gate_g(rownorm(sum_{u in other parts} P_tu B_u)),
  s_t = mix * sum_{u in other parts} P_tu / sum_u P_tu: the prior decides which adapters a task
  shares and how much of its graph neighbourhood lies in other parts, `mix` scales that share.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from scipy.linalg import block_diag
from torch import nn
from torch_geometric.nn.norm import PairNorm

from cft.nn.graph import NormalizedAdjacencyCache
from cft.spec import COMPOSE_RULES, READOUTS, PartSpec


def gate(probs: torch.Tensor, threshold: float, top_k: int | None = None) -> torch.Tensor:
    """Zero weights under `threshold` (and outside the top k), renormalise each row.

    The largest weight of a row is always kept, so no row goes empty. The forward value is
    the gated matrix; the backward pass is the identity (straight-through estimator), so
    routes that are currently gated off still receive gradient and can come back.
    """
    keep = probs >= threshold
    keep = keep | (probs == probs.max(dim=-1, keepdim=True).values)
    if top_k is not None and top_k < probs.size(-1):
        in_top = torch.zeros_like(keep).scatter_(-1, probs.topk(top_k, dim=-1).indices, True)
        keep = keep & in_top
    hard = probs * keep
    hard = hard / hard.sum(dim=-1, keepdim=True).clamp_min(1e-12)
    return probs + (hard - probs).detach()


def row_normalize(matrix: torch.Tensor) -> torch.Tensor:
    return matrix / matrix.sum(dim=-1, keepdim=True).clamp_min(1e-12)


def task_entropy(routes: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of each task's route: routes [T, K] -> [T]."""
    p = routes.clamp_min(1e-12)
    return -(routes * p.log()).sum(dim=-1)


def routing_entropy(routes: torch.Tensor) -> torch.Tensor:
    """Mean over tasks of the entropy (nats) of each task's route."""
    return task_entropy(routes).mean()


class PartRouter(nn.Module):
    def __init__(self, spec: PartSpec, hidden: int, relation: np.ndarray):
        super().__init__()
        self.spec = spec
        t, m = len(spec.tasks), spec.embed_dim
        # a part without adapters, or with uniform routes, has nothing to route: no parameters
        # (head-only and full fine-tuning bundles then hold exactly what they train)
        self.routed = bool(spec.layers) and spec.mode == "routed"
        if self.routed:
            self.task_embed = nn.Parameter(torch.randn(t, m))
            self.keys = nn.ParameterDict({str(layer): nn.Parameter(torch.randn(spec.num_adapters, m)) for layer in spec.layers})
            self.query = nn.Linear(hidden, m)
        self.register_buffer("relation", torch.as_tensor(relation, dtype=torch.float32).clone())
        self.normalized = NormalizedAdjacencyCache()
        # no parameters (bundles of either setting hold the same tensors); eps far below the squared
        # spread a dense prior leaves (PyG's 1e-5 shrank it by 7% in the test)
        self.pair_norm = PairNorm(scale=1.0, eps=1e-12)
        if spec.learned_prior and self.routed:
            # A = softplus(sym(P)) with P chosen so that A starts at the source matrix
            beta = 10.0
            start = self.relation.clamp_min(1e-3)
            self.relation_logit = nn.Parameter(torch.log(torch.expm1(beta * start)) / beta)

    def relation_matrix(self) -> torch.Tensor:
        if hasattr(self, "relation_logit"):
            sym = (self.relation_logit + self.relation_logit.t()) / 2
            return F.softplus(sym, beta=10.0)
        return self.relation

    def propagated_embeddings(self) -> torch.Tensor | None:
        """E~ [T, m]: E <- (1 - a) A_hat E + a E_0, k times from E_0 (a = `prior_restart`, k = `prior_steps`),
        then, with `prior_norm: pairnorm`, E~ <- PairNorm(E~) * rms(E_0), where PairNorm(X) =
        (X - mean_t X) / rms(X - mean_t X) over the tasks and rms(X) = sqrt(mean_t ||X_t||^2).

        With a = 0 this is k steps of graph convolution, A_hat^k E_0, which smooths the embeddings
        of a connected graph towards one another as k grows; a > 0 keeps a share a of every task's
        own embedding at each step (personalised PageRank truncated at k), so routes stay task-specific.
        PairNorm removes the common vector the smoothing leaves and restores the scale the routing
        softmax was set for (`temperature`). None for a part that does not route."""
        if not self.routed:
            return None
        emb0 = emb = self.task_embed
        restart = self.spec.prior_restart
        if self.spec.prior_steps:
            a_hat = self.normalized(self.relation_matrix())
            for _ in range(self.spec.prior_steps):
                emb = a_hat @ emb if restart == 0 else (1.0 - restart) * (a_hat @ emb) + restart * emb0
        if self.spec.prior_norm == "pairnorm":
            emb = self.pair_norm(emb) * emb0.pow(2).sum(-1).mean().sqrt()
        return emb

    def routes(self, embeddings: torch.Tensor | None = None) -> dict[int, torch.Tensor]:
        """Task x adapter routing matrix per insertion layer, [T_p, K_p] each."""
        spec = self.spec
        if not spec.layers:
            return {}
        if spec.mode == "uniform":
            t = len(spec.tasks)
            uniform = self.relation.new_full((t, spec.num_adapters), 1.0 / spec.num_adapters)
            return {layer: uniform for layer in spec.layers}
        emb = self.propagated_embeddings() if embeddings is None else embeddings
        scale = spec.temperature * math.sqrt(spec.embed_dim)
        return {
            layer: gate(torch.softmax(emb @ self.keys[str(layer)].t() / scale, dim=-1), spec.threshold, spec.top_k)
            for layer in spec.layers
        }

    def relevance(self, state: torch.Tensor, embeddings: torch.Tensor | None) -> torch.Tensor:
        """w(x): [B, T_p] softmax over this part's tasks, from the pooled query state [B, d]
        (uniform for a part that does not route: its routes are the same for every task)."""
        if not self.routed:
            return state.new_full((state.size(0), len(self.spec.tasks)), 1.0 / len(self.spec.tasks))
        q = self.query(state)
        return torch.softmax(q @ embeddings.t() / math.sqrt(self.spec.embed_dim), dim=-1)

    def anchor_penalty(self) -> torch.Tensor:
        if not hasattr(self, "relation_logit"):
            return self.relation.new_zeros(())
        return self.spec.prior_anchor * ((self.relation_matrix() - self.relation) ** 2).mean()


class Router(nn.Module):
    """All parts of a model, plus the union prior used to compose their routes."""

    def __init__(
        self,
        parts: list[PartSpec],
        hidden: int,
        part_relations: list[np.ndarray],
        union_relation: np.ndarray | None = None,
        compose_steps: int = 0,
        compose_threshold: float = 0.0,
        compose_rule: str = "propagate",
        compose_mix: float = 1.0,
        readout: str = "mixture",
    ):
        super().__init__()
        if compose_rule not in COMPOSE_RULES:
            raise ValueError(f"unknown compose rule {compose_rule!r}")
        if readout not in READOUTS:
            raise ValueError(f"unknown read-out {readout!r}")
        self.readout = readout
        self.part_specs = parts
        self.parts = nn.ModuleList([PartRouter(p, hidden, r) for p, r in zip(parts, part_relations)])
        self.compose_steps = compose_steps
        self.compose_threshold = compose_threshold
        self.compose_rule = compose_rule
        self.compose_mix = compose_mix
        self.tasks = [t for p in parts for t in p.tasks]
        self.task_offsets = np.cumsum([0] + [len(p.tasks) for p in parts]).tolist()
        # adapters of each layer: the parts that adapt it, in part order
        self.layer_sizes: dict[int, int] = {}
        self.adapter_offsets: list[dict[int, int]] = []
        for p in parts:
            offsets = {}
            for layer in p.layers:
                offsets[layer] = self.layer_sizes.get(layer, 0)
                self.layer_sizes[layer] = offsets[layer] + p.num_adapters
            self.adapter_offsets.append(offsets)
        self.layers = sorted(self.layer_sizes)
        # task read-out: the last insertion layer's adapters are the experts every task gates
        self.expert_layer: int | None = self.layers[-1] if readout == "task" and self.layers else None
        if union_relation is None:
            union_relation = block_diag(*part_relations).astype(np.float32)
        self.register_buffer("relation", torch.as_tensor(union_relation, dtype=torch.float32).clone())
        self.normalized = NormalizedAdjacencyCache()
        # which group (part) serves each task: heads read that group's representation
        self.register_buffer(
            "task_group", torch.tensor([g for g, p in enumerate(parts) for _ in p.tasks], dtype=torch.long), persistent=False
        )
        self.register_buffer("same_part", self.task_group[:, None] == self.task_group[None, :], persistent=False)

    @property
    def num_groups(self) -> int:
        return len(self.parts)

    def union_relation(self) -> torch.Tensor:
        """The relation matrix over all tasks (a single part's own, possibly learned)."""
        if len(self.parts) == 1 and self.compose_steps == 0:
            return self.parts[0].relation_matrix()
        return self.relation

    def routes(self, embeddings: list[torch.Tensor] | None = None) -> dict[int, torch.Tensor]:
        """Union task x adapter routing matrix per insertion layer, [T, K_l]."""
        t = len(self.tasks)
        part_routes = [part.routes(None if embeddings is None else embeddings[i]) for i, part in enumerate(self.parts)]
        out = {}
        prop = None
        if self.compose_steps > 0:
            a_hat = self.normalized(self.relation)
            prop = a_hat
            for _ in range(self.compose_steps - 1):
                prop = a_hat @ prop
            if self.compose_rule == "residual":
                cross_weight = prop.masked_fill(self.same_part, 0.0)
                outside = cross_weight.sum(dim=1)
                share = self.compose_mix * outside / prop.sum(dim=1).clamp_min(1e-12)
        for layer in self.layers:
            width = self.layer_sizes[layer]
            blocks = []
            for g, routes in enumerate(part_routes):
                if layer in routes:  # place the part's routes in its columns of the union bank
                    start = self.adapter_offsets[g][layer]
                    blocks.append(F.pad(routes[layer], (start, width - start - routes[layer].size(1))))
                else:
                    blocks.append(self.relation.new_zeros((len(self.part_specs[g].tasks), width)))
            block_diag = torch.cat(blocks, dim=0) if len(blocks) > 1 else blocks[0]
            if prop is not None and self.compose_rule == "propagate":
                block_diag = gate(row_normalize(prop @ block_diag), self.compose_threshold)
            elif prop is not None:
                cross = gate(row_normalize(cross_weight @ block_diag), self.compose_threshold)  # zero rows stay zero
                block_diag = (1.0 - share)[:, None] * block_diag + share[:, None] * cross
            assert block_diag.shape == (t, self.layer_sizes[layer])
            out[layer] = block_diag
        return out

    def alphas(self, query_states: list[torch.Tensor], routes: dict[int, torch.Tensor], embeddings: list[torch.Tensor]) -> dict[int, torch.Tensor]:
        """Per-molecule adapter weights per mixture layer: [G, B, K_l] (group g serves part g's tasks).
        The expert layer of the task read-out has none: there each task uses its own gates."""
        mixed = {layer: r for layer, r in routes.items() if layer != self.expert_layer}
        if not mixed:
            return {}
        weights = [part.relevance(state, emb) for part, state, emb in zip(self.parts, query_states, embeddings)]
        out = {}
        for layer, r in mixed.items():
            rows = [w @ r[self.task_offsets[g] : self.task_offsets[g + 1]] for g, w in enumerate(weights)]
            out[layer] = torch.stack(rows, dim=0)
        return out

    def deciding_routes(self, routes: dict[int, torch.Tensor]) -> dict[int, torch.Tensor]:
        """The routes that decide a task's path: every insertion layer's for the mixture read-out;
        for the task read-out the expert layer's only (its rows R_t are the gates task t reads the
        experts with; the lower layers' routes enter a mixture shared by all tasks)."""
        if self.expert_layer is not None and self.expert_layer in routes:
            return {self.expert_layer: routes[self.expert_layer]}
        return routes

    def routed_deciding(self, routes: dict[int, torch.Tensor]) -> list[torch.Tensor]:
        """The deciding layers' routes [T, K] with a choice to make (K > 1)."""
        return [r for r in self.deciding_routes(routes).values() if r.size(1) > 1]

    def _mean_over_deciding(self, routes: dict[int, torch.Tensor], per_layer) -> torch.Tensor:
        """(1/|L|) sum_{l in L} per_layer(R^l) / ln K_l over the deciding layers L with K > 1, where
        per_layer maps routes [T, K] to a scalar in nats; zero when no such layer exists."""
        deciding = self.routed_deciding(routes)
        if not deciding:
            return self.relation.new_zeros(())
        return sum(per_layer(r) / math.log(r.size(1)) for r in deciding) / len(deciding)

    def normalised_entropy(self, routes: dict[int, torch.Tensor]) -> torch.Tensor:
        """Mean over the deciding layers (`deciding_routes`) of the mean task-route entropy divided
        by ln K, in [0, 1]: 1 for uniform routes, 0 when every task uses one adapter. Its weight in
        the loss is `train.route_entropy` (beta): L = L_task + lambda L_reg + beta * this."""
        return self._mean_over_deciding(routes, routing_entropy)

    def normalised_balance(self, routes: dict[int, torch.Tensor]) -> torch.Tensor:
        """How evenly the tasks, taken together, use a deciding layer's adapters: the entropy of the
        mean route, H((1/T) sum_t R_t) / ln K, averaged over the deciding layers, in [0, 1]; 1 when
        every adapter carries the same share of all tasks' weight, 0 when every task uses the same
        one. Sharp routes alone (`normalised_entropy` -> 0) can all pick one adapter; the difference
        H(mean route) - mean_t H(R_t) is the mutual information between task and adapter, which is
        high only when tasks pick *different* adapters. Its weight in the loss is
        `train.route_balance` (gamma): L = ... + gamma (1 - this)."""
        return self._mean_over_deciding(routes, lambda r: task_entropy(r.mean(dim=0, keepdim=True))[0])

    def regularizer(self, routes: dict[int, torch.Tensor]) -> torch.Tensor:
        """Prior consistency: mean over layers of (1/T) sum_{t,u} A_hat_tu ||R_t - R_u||^2,
        plus the anchor of learned priors. Zero when linked tasks route identically. The layers are
        those whose routes decide a task's path (`deciding_routes`)."""
        penalty = sum((part.anchor_penalty() for part in self.parts), self.relation.new_zeros(()))
        routes = self.deciding_routes(routes)
        if not routes:
            return penalty
        union = self.union_relation()
        a_hat = self.parts[0].normalized(union) if union is self.parts[0].relation else self.normalized(union)
        degree = a_hat.sum(dim=1)
        total = self.relation.new_zeros(())
        for r in routes.values():
            # sum_{t,u} A_tu ||R_t - R_u||^2 = 2 (sum_t d_t ||R_t||^2 - tr(R^T A R)): O(T^2 K)
            # without the T x T distance matrix (ToxCast has 617 tasks)
            value = 2.0 * ((degree * (r * r).sum(dim=1)).sum() - ((a_hat @ r) * r).sum())
            total = total + value.clamp_min(0.0) / r.size(0)
        return total / len(routes) + penalty
