"""The cft model: frozen backbone + adapter banks + router + task heads, and its losses.

Forward pass (one pass serves every task):
1. the backbone runs unadapted up to the first insertion layer (under no_grad when frozen);
   the pooled state there is each part's query q(x);
2. routes R^l and per-molecule weights alpha^l(x) = w(x)^T R^l come from the router;
3. the remaining layers run with h <- h + s * bank_l(h, alpha^l) after each insertion layer;
4. one logit per task from the pooled, adapted representation.

A composed model has several groups (one per source bundle, each with its own query); the
adapted layers then run once per group on a replicated batch, and each task's head reads its
own group's representation. A trained bundle has one group: no replication.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch
from torch import nn

from cft.nn.adapters import AdapterBank
from cft.nn.backbone import Backbone
from cft.nn.losses import masked_multitask_loss
from cft.nn.routing import Router, routing_entropy
from cft.spec import ModelSpec


class CftModel(nn.Module):
    def __init__(
        self,
        backbone: Backbone,
        spec: ModelSpec,
        part_relations: list[np.ndarray],
        union_relation: np.ndarray | None = None,
        freeze_backbone: bool = True,
    ):
        super().__init__()
        self.spec = spec
        self.backbone = backbone
        hidden = backbone.spec.hidden
        self.router = Router(
            spec.parts, hidden, part_relations, union_relation, spec.compose_steps, spec.compose_threshold, spec.compose_rule, spec.compose_mix
        )
        self.adapters = nn.ModuleDict(
            {
                str(layer): AdapterBank(size, spec.bank_rank, hidden, spec.activation, spec.adapter_dropout)
                for layer, size in self.router.layer_sizes.items()
            }
        )
        self.head = nn.Linear(hidden, len(spec.tasks))
        self.register_buffer("is_binary", torch.tensor([k == "binary" for k in spec.kinds]), persistent=False)
        self.freeze_backbone = freeze_backbone
        if freeze_backbone:
            self.backbone.requires_grad_(False)
        self.train(False)

    def train(self, mode: bool = True) -> CftModel:
        super().train(mode)
        if self.freeze_backbone:
            # a frozen backbone is a fixed function: BatchNorm uses its running statistics
            # (never updated) and dropout is off, so composed bundles see the same backbone
            self.backbone.eval()
        return self

    # ------------------------------------------------------------------ forward

    def forward(self, data, with_routes: bool = False, prefix: tuple | None = None):
        """Logits [B, T]; with_routes=True also returns the routes (for the regulariser).
        `prefix`: see `forward_with_routes`."""
        logits, routes = self.forward_with_routes(data, prefix)
        return (logits, routes) if with_routes else logits

    def prefix_layer(self) -> int | None:
        """The layer up to which the forward pass is a fixed function of the molecule (the first
        insertion layer of a frozen backbone in eval mode), or None when there is none."""
        layers = self.router.layers
        return layers[0] if layers and self.freeze_backbone and not self.backbone.training else None

    def forward_with_routes(self, data, prefix: tuple | None = None) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """`prefix` = (layer, h [N, d], vn [B, d] or None): the unadapted node and virtual-node
        states entering `layer` (= `prefix_layer()`), computed earlier (cft.training.prefix);
        the forward pass then starts there instead of at the atom encoder."""
        bb, router = self.backbone, self.router
        num_graphs = int(data.num_graphs)
        x, edge_index, edge_attr, batch = data.x, data.edge_index, data.edge_attr, data.batch
        layers = router.layers
        if not layers:  # head only / full fine-tuning: the plain backbone
            return self.head(bb(data)), {}
        first = layers[0]
        frozen_prefix = torch.no_grad() if self.freeze_backbone else contextlib.nullcontext()
        with frozen_prefix:
            if prefix is not None:
                if prefix[0] != first or not self.freeze_backbone:
                    raise ValueError(f"a cached prefix to layer {prefix[0]} does not fit this model (first insertion layer {first}, frozen {self.freeze_backbone})")
                h, vn = prefix[1], prefix[2]
            else:
                h, vn = bb.encode(x, num_graphs)
                for i in range(first):
                    h, vn = bb.layer(i, h, vn, edge_index, edge_attr, batch)
            query_states = self._query_states(h, vn, first, edge_index, edge_attr, batch, num_graphs)

        embeddings = [part.propagated_embeddings() for part in router.parts]
        routes = router.routes(embeddings)
        alphas = router.alphas(query_states, routes, embeddings)  # {layer: [G, B, K]}

        groups = router.num_groups
        if groups > 1:
            h, vn, edge_index, edge_attr, batch = _replicate(h, vn, edge_index, edge_attr, batch, groups, num_graphs)
        for i in range(first, bb.num_layers):
            h, vn = bb.layer(i, h, vn, edge_index, edge_attr, batch)
            if i in alphas:
                alpha = alphas[i].reshape(groups * num_graphs, -1)[batch]
                h = h + self.spec.scale * self.adapters[str(i)](h, alpha)
        pooled = bb.pool(h, batch, groups * num_graphs)
        logits = self.head(pooled)
        if groups > 1:
            logits = logits.view(groups, num_graphs, -1)
            index = router.task_group.view(1, 1, -1).expand(1, num_graphs, -1)
            logits = logits.gather(0, index).squeeze(0)
        return logits, routes

    def _query_states(self, h, vn, first, edge_index, edge_attr, batch, num_graphs) -> list[torch.Tensor]:
        """Pooled unadapted state at each part's query layer (its first insertion layer)."""
        bb = self.backbone
        states = {first: bb.pool(h, batch, num_graphs)}
        wanted = [p.query_layer if p.query_layer is not None else first for p in self.router.part_specs]
        for i in range(first, max(wanted)):  # only composed parts with later layers need this
            h, vn = bb.layer(i, h, vn, edge_index, edge_attr, batch)
            states[i + 1] = bb.pool(h, batch, num_graphs)
        return [states[q] for q in wanted]

    # ------------------------------------------------------------------ losses

    def task_loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Masked BCE (binary tasks) + masked MSE (regression), averaged over labelled entries."""
        return masked_multitask_loss(logits, y, self.is_binary)

    # ------------------------------------------------------------------ read-outs

    @torch.no_grad()
    def routing_matrices(self) -> dict[int, np.ndarray]:
        return {layer: r.detach().float().cpu().numpy() for layer, r in self.router.routes().items()}

    @torch.no_grad()
    def routing_stats(self) -> dict[str, dict[str, float]]:
        """Per layer: mean routing entropy (nats) and fraction of active (non-zero) routes."""
        return {
            str(layer): {"entropy": float(routing_entropy(r)), "active_fraction": float((r > 0).float().mean())}
            for layer, r in self.router.routes().items()
        }

    def parameter_counts(self) -> dict[str, int]:
        backbone = sum(p.numel() for p in self.backbone.parameters())
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        total = sum(p.numel() for p in self.parameters())
        return {"trainable": trainable, "backbone": backbone, "total": total}

    def bundle_state(self) -> dict[str, torch.Tensor]:
        """Everything but the backbone: what a bundle stores."""
        return {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items() if not k.startswith("backbone.")}


def _replicate(h, vn, edge_index, edge_attr, batch, groups: int, num_graphs: int):
    """Stack `groups` copies of a batch (each group is routed by its own part)."""
    n = h.size(0)
    node_shift = (torch.arange(groups, device=h.device) * n).repeat_interleave(edge_index.size(1))
    graph_shift = (torch.arange(groups, device=h.device) * num_graphs).repeat_interleave(n)
    return (
        h.repeat(groups, 1),
        vn.repeat(groups, 1) if vn is not None else None,
        edge_index.repeat(1, groups) + node_shift,
        edge_attr.repeat(groups, 1),
        batch.repeat(groups) + graph_shift,
    )
