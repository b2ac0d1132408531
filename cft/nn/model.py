"""The cft model: frozen backbone + adapter banks + router + task heads, and its losses.

Forward pass (one pass serves every task):
1. the backbone runs unadapted up to the first insertion layer (under no_grad when frozen);
   the pooled state there is each part's query q(x);
2. routes R^l and per-molecule weights alpha^l(x) = w(x)^T R^l come from the router;
3. the remaining layers run with h <- h + s * bank_l(h, alpha^l) after each insertion layer
   (for `readout: task`, each insertion layer below the last one, L*); with `placement: mlp` the
   bank acts beside the layer's GIN MLP instead, MLP(z) + s * bank_l(z, alpha^l) on the MLP's
   input z (the aggregated messages), before the layer's BatchNorm and ReLU (`mlp-hidden`: on the
   MLP's first Linear; `mlp-out`: beside its second Linear, on that Linear's input; `mlp-both`:
   both at once, a second bank `out_adapters` under the same weights; with virtual-node adapters,
   a pair more, `vn_adapters` and `vn_out_adapters`, on the virtual node's MLP in the same places,
   its rows graphs, under the same weights per graph, alpha^l(x)); with embedding adapters, one
   bank more on the atom encoder's output before layer 0, h^0 <- h^0 + s * bank(m(x), alpha^0),
   m(x) the atoms' multi-hot features (`EmbeddingAdapterBank`);
4. the read-out, by `spec.readout`:
   - `mixture`: one logit per task from the pooled adapted representation, logit = W pool(h) + c;
   - `task`: the K adapters of L* are experts. Expert k's pooled output is
     z_k(x) = pool(F(h + s f_k(h))), F = the backbone layers after L*, and z_0(x) = pool(F(h)) the
     unadapted one; with D_k = z_k - z_0 ([B, K, d]) task t reads
         r_t(x) = z_0(x) + sum_k R_tk D_k(x) = (1 - sum_k R_tk) z_0 + sum_k R_tk z_k,
         logit_t(x) = w_t . r_t(x) + c_t,
     with R_t its own gates (the routes of L*, [T, K]). All T logits are one einsum,
     logits = z_0 W^T + einsum("bkt,tk->bt", D W^T, R) + c: no loop over tasks (`expert_readout`).
     With one adapter at L* in a trained (uncomposed) model every gate is 1 and r_t = z_1 for all t:
     the layers then run once, adapted, into the mixture read-out (no z_0 pass).
     When L* is the backbone's last layer and pooling is linear (mean, sum), F is the identity and
     D_k = s V_k pool(phi(U_k h)): the [N, K*r] activations are pooled to [B, K*r] first, then K
     small products. Otherwise the layers after L* run on K + 1 stacked copies of the batch.
     With `placement: mlp` the experts act inside L* (`_mlp_expert_outputs`): for the last layer
     of a frozen backbone, D_k = s g * V_k pool(phi(U_k z)), g the gain of L*'s eval-mode BatchNorm;
     (`mlp-out`: the same on the second Linear's input u); with `mlp-hidden` (the update passes the
     MLP's BatchNorm and ReLU) the [N, K, 2d] hidden units are pooled before the second Linear
     (`mlp-both`: plus the second bank's expert k on expert k's hidden units).

A composed model has several groups (one per source bundle, each with its own query); the
adapted layers then run once per group on a replicated batch, and each task's head reads its
own group's representation (under `task`, its own group's experts, through its row of the
composed routes). A trained bundle has one group: no replication.
"""

from __future__ import annotations

import contextlib
import itertools
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from cft.nn.adapters import AdapterBank, BankUpdate, EmbeddingAdapterBank
from cft.nn.backbone import Backbone
from cft.nn.frozen import bf16_frozen_products
from cft.nn.losses import masked_multitask_loss
from cft.nn.routing import Router, routing_entropy
from cft.spec import ModelSpec


class Features(NamedTuple):
    """What the task heads read, for a batch of B molecules in G groups (one per part).

    `pooled` [G, B, d]: the pooled adapted representation (mixture read-out, head only, full
    fine-tuning); or, for the task read-out, its experts: `base` z_0 [G, B, d], `deltas`
    D [G, B, K, d] and `gates` R [T, K] (the routes of the expert layer)."""

    pooled: torch.Tensor | None = None
    base: torch.Tensor | None = None
    deltas: torch.Tensor | None = None
    gates: torch.Tensor | None = None


class CftModel(nn.Module):
    def __init__(
        self,
        backbone: Backbone,
        spec: ModelSpec,
        part_relations: list[np.ndarray],
        union_relation: np.ndarray | None = None,
        freeze_backbone: bool = True,
        frozen_dropout: float = 0.0,
    ):
        """`frozen_dropout`: the dropout rate of a frozen backbone's layers while the model trains
        (0: none, the backbone is a fixed function). Its BatchNorm keeps the pretraining statistics
        either way, and evaluation never drops anything."""
        super().__init__()
        self.spec = spec
        self.backbone = backbone
        hidden = backbone.spec.hidden
        self.router = Router(
            spec.parts, hidden, part_relations, union_relation, spec.compose_steps, spec.compose_threshold, spec.compose_rule, spec.compose_mix,
            spec.readout,
        )
        reads, writes = _bank_widths(backbone, spec)
        self.adapters = nn.ModuleDict(
            {
                str(layer): AdapterBank(size, spec.bank_rank, reads, spec.activation, spec.adapter_dropout, out_dim=writes)
                for layer, size in self.router.layer_sizes.items()
            }
        )
        if spec.placement == "mlp-both":  # the second bank, beside each MLP's second Linear (2d -> d), expert i beside expert i
            self.out_adapters = nn.ModuleDict(
                {
                    str(layer): AdapterBank(size, spec.bank_rank, writes, spec.activation, spec.adapter_dropout, out_dim=hidden)
                    for layer, size in self.router.layer_sizes.items()
                }
            )
        if spec.virtual_node_adapters:
            # the pair again on the virtual node's MLP (Linear(d, 2d), BN, ReLU, Linear(2d, d), BN, ReLU)
            # of every insertion layer but the last, which updates no virtual node
            vn_hidden = backbone.vn_mlps[0][0].out_features
            vn_layers = {layer: size for layer, size in self.router.layer_sizes.items() if layer < backbone.num_layers - 1}
            self.vn_adapters = nn.ModuleDict(
                {str(layer): AdapterBank(size, spec.virtual_node_bank_rank, hidden, spec.activation, spec.adapter_dropout, out_dim=vn_hidden) for layer, size in vn_layers.items()}
            )
            self.vn_out_adapters = nn.ModuleDict(
                {str(layer): AdapterBank(size, spec.virtual_node_bank_rank, vn_hidden, spec.activation, spec.adapter_dropout, out_dim=hidden) for layer, size in vn_layers.items()}
            )
        if spec.embedding_adapters:
            # one bank on the atom encoder's output, under layer 0's weights alpha^0(x), before layer 0
            vocabulary = [table.num_embeddings for table in backbone.atom_encoder.atom_embedding_list]
            size = self.router.layer_sizes[0]
            self.embedding_adapters = nn.ModuleDict(
                {"0": EmbeddingAdapterBank(size, spec.embedding_bank_rank, vocabulary, hidden, spec.activation, spec.adapter_dropout)}
            )
        self.head = nn.Linear(hidden, len(spec.tasks))
        self.register_buffer("is_binary", torch.tensor([k == "binary" for k in spec.kinds]), persistent=False)
        mean, std = spec.target_affine
        self.standardised = spec.target_mean is not None or spec.target_std is not None
        self.register_buffer("target_mean", torch.tensor(mean, dtype=torch.float32), persistent=False)
        self.register_buffer("target_std", torch.tensor(std, dtype=torch.float32), persistent=False)
        self.freeze_backbone = freeze_backbone
        if freeze_backbone:
            self.backbone.requires_grad_(False)
            self.backbone.dropout = frozen_dropout
        self.train(False)

    @property
    def frozen_dropout(self) -> float:
        """The dropout rate of the frozen backbone's layers while training (the backbone holds it); 0
        for a trained backbone, whose own rate (`BackboneSpec.dropout`) applies instead."""
        return self.backbone.dropout if self.freeze_backbone else 0.0

    def train(self, mode: bool = True) -> CftModel:
        super().train(mode)
        if self.freeze_backbone:
            # a frozen backbone's BatchNorm always uses its running statistics (never updated), so
            # composed bundles see the same backbone; its dropout is on only while training with
            # frozen_dropout > 0, a regulariser for the adapters (PEFT leaves the base model's on)
            self.backbone.train(mode and self.frozen_dropout > 0)
            for module in self.backbone.modules():
                if isinstance(module, nn.BatchNorm1d):
                    module.eval()
        return self

    def adapter_banks(self) -> dict[str, nn.ModuleDict]:
        """The banks per insertion layer, by their state-dict prefix (`bank_names`); the virtual-node
        banks hold no entry for the last layer."""
        return {name: getattr(self, name) for name in bank_names(self.spec.placement, self.spec.virtual_node_adapters, self.spec.embedding_adapters)}

    # ------------------------------------------------------------------ forward

    def forward(self, data, with_routes: bool = False, prefix: tuple | None = None):
        """Logits [B, T]; with_routes=True also returns the routes (for the regulariser).
        `prefix`: see `forward_with_routes`."""
        logits, routes = self.forward_with_routes(data, prefix)
        return (logits, routes) if with_routes else logits

    def prefix_layer(self) -> int | None:
        """The layer up to which the forward pass is a fixed function of the molecule: the first
        insertion layer of a frozen backbone in eval mode, or `num_layers` (the whole backbone, only
        the heads train) when it has no adapters; None for a trainable backbone, or a frozen one
        whose layers drop out while training (`frozen_dropout`)."""
        if not self.freeze_backbone or self.backbone.training or self.frozen_dropout > 0:
            return None
        layers = self.router.layers
        return layers[0] if layers else self.backbone.num_layers

    def forward_with_routes(self, data, prefix: tuple | None = None) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """Outputs [B, T] in the labels' units (logits for binary tasks) and the routes.

        The head predicts standardised targets u; a regression task's output is
        y_hat = std_t * u + mean_t with the training split's statistics (`ModelSpec.target_mean`,
        `target_std`), the identity for binary tasks and for specs without them.
        `prefix` = (layer, h [N, d], vn [B, d] or None): the unadapted node and virtual-node
        states entering `layer` (= `prefix_layer()`), computed earlier (cft.training.prefix);
        the forward pass then starts there instead of at the atom encoder."""
        standardised, routes = self._standardised_forward(data, prefix)
        if self.standardised:
            return standardised * self.target_std + self.target_mean, routes
        return standardised, routes

    @torch.no_grad()
    def representations(self, data, prefix: tuple | None = None) -> torch.Tensor:
        """The pooled adapted representation per molecule and group, [G, B, d] (G = 1 but for a
        composed model, one group per part): what `cft fingerprint` exports.

        - `readout: mixture` (and head only / full fine-tuning): the heads' input, pool(h) after
          the adapted layers; logits = W rep + c.
        - `readout: task`: each task t reads its own r_t(x) = z_0(x) + sum_k R_tk D_k(x); a group's
          representation is its tasks' mean, z_0 + sum_k Rbar_k D_k with Rbar the mean of the
          group's gate rows R_t (a one-task group gives exactly its task's r_t)."""
        features, _ = self._features(data, prefix)
        if features.deltas is None:
            return features.pooled
        gates = features.gates
        offsets = self.router.task_offsets if features.base.size(0) > 1 else [0, gates.size(0)]
        mean_gates = torch.stack([gates[a:b].mean(0) for a, b in itertools.pairwise(offsets)])  # [G, K]
        return features.base + torch.einsum("gbkd,gk->gbd", features.deltas, mean_gates)

    def _standardised_forward(self, data, prefix: tuple | None) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        features, routes = self._features(data, prefix)
        return self._heads(features), routes

    def _heads(self, features: Features) -> torch.Tensor:
        """Standardised outputs [B, T] from the features: each task reads its own group's."""
        if features.deltas is not None:
            return self._task_readout(features.base, features.deltas, features.gates)
        groups, num_graphs, _ = features.pooled.shape
        logits = self.head(features.pooled.flatten(0, 1))
        if groups == 1:
            return logits
        logits = logits.view(groups, num_graphs, -1)
        index = self.router.task_group.view(1, 1, -1).expand(1, num_graphs, -1)
        return logits.gather(0, index).squeeze(0)

    def _features(self, data, prefix: tuple | None) -> tuple[Features, dict[int, torch.Tensor]]:
        """The backbone with its adapters up to the read-out (steps 1-3 of the module docstring)."""
        bb, router = self.backbone, self.router
        num_graphs = int(data.num_graphs)
        x, edge_index, edge_attr, batch = data.x, data.edge_index, data.edge_attr, data.batch
        layers = router.layers
        first = layers[0] if layers else bb.num_layers
        if prefix is not None and (prefix[0] != first or not self.freeze_backbone):
            raise ValueError(f"a cached prefix to layer {prefix[0]} does not fit this model (first insertion layer {first}, frozen {self.freeze_backbone})")
        if not layers:  # head only / full fine-tuning: the plain backbone, or its cached node states (head only)
            with bf16_frozen_products(False):  # head only: the whole backbone is the prefix (fp32, as below)
                pooled = bb(data) if prefix is None else bb.pool(prefix[1], batch, num_graphs)
            return Features(pooled=pooled.unsqueeze(0)), {}
        frozen_prefix = torch.no_grad() if self.freeze_backbone else contextlib.nullcontext()
        # the layers below the first insertion layer in fp32 even among bf16 frozen products: the same
        # states whether recomputed here or taken from the prefix cache (computed once, in fp32)
        with frozen_prefix, bf16_frozen_products(False):
            if prefix is not None:
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
        placement = self.spec.placement
        expert, beside_mlp = router.expert_layer, placement != "output"
        if self._lone_expert():
            # one expert and every gate R_t1 = 1: logit_t = w_t . (z_0 + D_1) + c_t = w_t . z_1 + c_t, the
            # mixture read-out of one adapted pass (weight 1, `_single_route`), without the separate unadapted z_0
            expert = None
        for i in range(first, bb.num_layers):
            if i == expert and beside_mlp:  # the experts act inside layer i: from the states entering it
                base, deltas = self._mlp_expert_outputs(h, vn, i, edge_index, edge_attr, batch, groups * num_graphs)
                return Features(base=base.view(groups, num_graphs, -1), deltas=deltas.unflatten(0, (groups, num_graphs)), gates=routes[i]), routes
            adapted = i in layers and i != expert  # the expert layer reads its own gates (above and below)
            # one adapter whose every route is 1 (one uncomposed part): its weight is 1 at every node
            per_graph = None if not adapted or self._single_route(i) else alphas[i].reshape(groups * num_graphs, -1)  # [G B, K]
            alpha = None if per_graph is None else per_graph[batch]
            if i == 0 and adapted and self.spec.embedding_adapters:  # the atom embeddings' update, under layer 0's weights
                atoms = x if groups == 1 else x.repeat(groups, 1)
                h = h + self.embedding_adapters["0"](atoms, alpha, self.spec.scale)
            if beside_mlp:
                mlp_adapter = self._mixture_adapter(i, alpha) if adapted else None
                vn_adapter = self._vn_adapter(i, per_graph) if adapted else None
                h, vn = bb.layer(i, h, vn, edge_index, edge_attr, batch, mlp_adapter=mlp_adapter, at=placement, vn_adapter=vn_adapter)
                continue
            h, vn = bb.layer(i, h, vn, edge_index, edge_attr, batch)
            if i == expert:  # the experts act on layer i's output
                base, deltas = self._expert_outputs(h, vn, i, edge_index, edge_attr, batch, groups * num_graphs)
                return Features(base=base.view(groups, num_graphs, -1), deltas=deltas.unflatten(0, (groups, num_graphs)), gates=routes[i]), routes
            if adapted:
                h = h + self.adapters[str(i)](h, alpha, self.spec.scale)
        return Features(pooled=bb.pool(h, batch, groups * num_graphs).view(groups, num_graphs, -1)), routes

    def _single_route(self, layer: int) -> bool:
        """Whether `layer` holds one adapter of a trained (one-part, uncomposed) model: its routes are
        a softmax over one column (or uniform over one), so every gate R_t1 is exactly 1 and so is
        every molecule's weight alpha = sum_t w_t R_t1 (the router's arithmetic would give 1 within
        rounding, at the cost of a per-node product in the forward and backward passes)."""
        router = self.router
        return router.num_groups == 1 and router.compose_steps == 0 and router.layer_sizes[layer] == 1

    def _lone_expert(self) -> bool:
        """The task read-out of a trained (one-part, uncomposed) model with one adapter at L*."""
        expert = self.router.expert_layer
        return expert is not None and self._single_route(expert)

    def _mixture_adapter(self, layer: int, alpha: torch.Tensor | None):
        """z -> s * sum_i alpha_i f_i(z) for the bank of `layer` (the placements in the GIN MLP;
        alpha None: every weight 1); for `mlp-both` the pair of such functions of its two banks
        (`GINLayer.forward`)."""
        scale = self.spec.scale
        banks = [getattr(self, name)[str(layer)] for name in bank_names(self.spec.placement)]
        updates = tuple(BankUpdate(bank, alpha, scale) for bank in banks)
        return updates if len(updates) == 2 else updates[0]

    def _vn_adapter(self, layer: int, alpha: torch.Tensor | None):
        """(into_hidden, beside_second) for the virtual node's MLP of `layer` (`_virtual_node_mlp`),
        each s * sum_i alpha_i f_i of its bank; alpha [B, K] per graph (None: every weight 1). None
        without virtual-node adapters, or for the last layer."""
        if not self.spec.virtual_node_adapters or str(layer) not in self.vn_adapters:
            return None
        scale = self.spec.scale
        return BankUpdate(self.vn_adapters[str(layer)], alpha, scale), BankUpdate(self.vn_out_adapters[str(layer)], alpha, scale)

    def _expert_outputs(self, h, vn, layer, edge_index, edge_attr, batch, num_graphs) -> tuple[torch.Tensor, torch.Tensor]:
        """The experts of the task read-out at `layer` (= L*), from the node states h [N, d] after it.

        Returns z_0 [B, d] (the pooled state without L*'s adapters) and D [B, K, d], D_k = z_k - z_0
        (B counts every group's copy of the batch)."""
        bb, bank, scale = self.backbone, self.adapters[str(layer)], self.spec.scale
        if layer == bb.num_layers - 1 and bb.spec.pooling in ("mean", "sum"):
            # pooling commutes with V_k: pool the K*r activations, then K small products
            act = bank.activations(h)  # [N, K, r]
            pooled = bb.pool(act.flatten(1), batch, num_graphs).view(num_graphs, bank.num_adapters, bank.rank)
            return bb.pool(h, batch, num_graphs), scale * bank.expert_updates(pooled)
        return self._stacked_expert_outputs(h, vn, layer, edge_index, edge_attr, batch, num_graphs)

    def _stacked_expert_outputs(self, h, vn, layer, edge_index, edge_attr, batch, num_graphs) -> tuple[torch.Tensor, torch.Tensor]:
        """`_expert_outputs` for any layer and pooling: h + s f_k(h) for k = 1..K and h itself (k = 0)
        are stacked as K + 1 copies of the batch and run through the layers after `layer` once."""
        bb, bank, scale = self.backbone, self.adapters[str(layer)], self.spec.scale
        act = bank.activations(h)  # [N, K, r]
        copies = bank.num_adapters + 1  # copy 0 is the unadapted path z_0
        states = torch.cat([h.unsqueeze(0), h.unsqueeze(0) + scale * bank.expert_updates(act).transpose(0, 1)]).flatten(0, 1)
        vn, edge_index, edge_attr, batch = _replicate_graph(h.size(0), vn, edge_index, edge_attr, batch, copies, num_graphs)
        for i in range(layer + 1, bb.num_layers):
            states, vn = bb.layer(i, states, vn, edge_index, edge_attr, batch)
        z = bb.pool(states, batch, copies * num_graphs).view(copies, num_graphs, -1)
        return z[0], (z[1:] - z[0]).transpose(0, 1)

    def _mlp_expert_outputs(self, h, vn, layer, edge_index, edge_attr, batch, num_graphs) -> tuple[torch.Tensor, torch.Tensor]:
        """`_expert_outputs` for adapters in the GIN MLP (placements `mlp`, `mlp-hidden`, `mlp-out`,
        `mlp-both`), from the node states h [N, d] entering `layer` (= L*). Expert k adds s f_k(z) to
        the MLP's output on its input z (`mlp`), s f_k(z) to its first Linear's output (`mlp-hidden`),
        s f_k(u) to its second Linear's output on that Linear's input u (`mlp-out`), or both of its
        pair (`mlp-both`).

        When L* is the last layer, its BatchNorms in eval mode and pooling linear, one run of the layer
        serves every expert (`_pooled_mlp_expert_outputs`). Otherwise layer L* and the ones after it
        run on K + 1 copies of the batch, copy k adding expert k alone (one-hot weights; copy 0 none)."""
        bb, bank = self.backbone, self.adapters[str(layer)]
        at = self.spec.placement
        if layer == bb.num_layers - 1 and bb.spec.pooling in ("mean", "sum") and not bb.training:
            return self._pooled_mlp_expert_outputs(h, vn, layer, edge_index, edge_attr, batch, num_graphs)
        copies = bank.num_adapters + 1
        eye = torch.eye(bank.num_adapters, dtype=h.dtype, device=h.device)
        onehot = torch.cat([torch.zeros_like(eye[:1]), eye])  # [K + 1, K]: row 0 zero, row k = e_k
        states = h.repeat(copies, 1)
        vn, edge_index, edge_attr, batch = _replicate_graph(h.size(0), vn, edge_index, edge_attr, batch, copies, num_graphs)
        alpha = onehot.repeat_interleave(h.size(0), dim=0)  # [(K + 1) N, K]
        per_graph = onehot.repeat_interleave(num_graphs, dim=0)  # [(K + 1) B, K]: the virtual node's rows
        states, vn = bb.layer(layer, states, vn, edge_index, edge_attr, batch, mlp_adapter=self._mixture_adapter(layer, alpha), at=at,
                              vn_adapter=self._vn_adapter(layer, per_graph))
        for i in range(layer + 1, bb.num_layers):
            states, vn = bb.layer(i, states, vn, edge_index, edge_attr, batch)
        z = bb.pool(states, batch, copies * num_graphs).view(copies, num_graphs, -1)
        return z[0], (z[1:] - z[0]).transpose(0, 1)

    def _pooled_mlp_expert_outputs(self, h, vn, layer, edge_index, edge_attr, batch, num_graphs) -> tuple[torch.Tensor, torch.Tensor]:
        """The experts of the last layer L* beside its GIN MLP from one run of the layer, when its
        BatchNorms are in eval mode (BN(a + b) = BN(a) + g * b, g = `norm_gain`: affine per channel)
        and pooling is linear, so that pool(BN(a_k)) - pool(BN(a_0)) = g * pool(a_k - a_0):

        - `mlp`, `mlp-out`: the update passes only the layer's BatchNorm, so
          D_k = s g * V_k pool(phi(U_k x)), x = z (u for `mlp-out`): the [N, K*r] activations pooled
          to [B, K*r] first, then K small products;
        - `mlp-hidden`: the update passes the MLP's BatchNorm and ReLU, per node, so
          D_k = g * W_2 pool(u_k - u_0), u_k = ReLU(BN_mlp(W_1 z + b_1 + s f_k(z))) [N, K, 2d]:
          every expert's hidden units pooled to [B, K, 2d] before W_2;
        - `mlp-both`: as `mlp-hidden`, plus the second bank's expert k on u_k,
          D_k = g * (W_2 pool(u_k - u_0) + s V'_k pool(phi(U'_k u_k))).

        Returns z_0 [B, d] (the layer's pooled output without the experts) and D [B, K, d]; the
        residual and the bias b_2 are the same on every path and cancel in D."""
        bb, bank, scale, at = self.backbone, self.adapters[str(layer)], self.spec.scale, self.spec.placement
        taken = {}

        def tap(x):  # read what the bank reads (the MLP's input, or its second Linear's), add nothing: the output is z_0's
            taken["x"] = x

        out, _ = bb.layer(layer, h, vn, edge_index, edge_attr, batch, mlp_adapter=(tap, None) if at == "mlp-both" else tap, at=at)
        base, gain, k = bb.pool(out, batch, num_graphs), bb.norm_gain(layer), bank.num_adapters
        act = bank.activations(taken["x"])  # [N, K, r]
        if at in ("mlp", "mlp-out"):
            pooled = bb.pool(act.flatten(1), batch, num_graphs).view(num_graphs, k, bank.rank)
            return base, scale * gain * bank.expert_updates(pooled)
        first, norm, relu, second = bb.convs[layer].conv.nn  # Linear(d, 2d), BatchNorm1d(2d), ReLU, Linear(2d, d)
        pre = first(taken["x"])  # [N, 2d], the first Linear's output without an update
        moved = pre.unsqueeze(1) + scale * bank.expert_updates(act)  # [N, K, 2d]
        hidden = relu(norm(moved.flatten(0, 1))).view_as(moved)  # u_k
        change = bb.pool((hidden - relu(norm(pre)).unsqueeze(1)).flatten(1), batch, num_graphs).view(num_graphs, k, -1)
        deltas = change @ second.weight.t()  # [B, K, d]
        if at == "mlp-both":
            beside = self.out_adapters[str(layer)]
            own = bb.pool(beside.own_activations(hidden).flatten(1), batch, num_graphs).view(num_graphs, k, beside.rank)
            deltas = deltas + scale * beside.expert_updates(own)
        return base, gain * deltas

    def _task_readout(self, base: torch.Tensor, deltas: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
        """Logits [B, T] of the task read-out. base [G, B, d], deltas [G, B, K, d], gates [T, K]:
        the tasks of group g (one contiguous block per part) read group g's experts."""
        weight, bias = self.head.weight, self.head.bias
        if base.size(0) == 1:
            return expert_readout(base[0], deltas[0], weight, bias, gates)
        offsets = self.router.task_offsets
        return torch.cat(
            [expert_readout(base[g], deltas[g], weight[a:b], bias[a:b], gates[a:b]) for g, (a, b) in enumerate(itertools.pairwise(offsets))],
            dim=1,
        )

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
        """Masked BCE (binary tasks) + masked MSE (regression, on standardised targets), averaged over
        labelled entries. `logits`: the model's outputs [B, T] (label units); `y`: labels [B, T], NaN = none."""
        if self.standardised:
            logits, y = (logits - self.target_mean) / self.target_std, (y - self.target_mean) / self.target_std
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

    @torch.no_grad()
    def deciding_routes_stats(self) -> dict[str, float | None]:
        """How the routes that decide each task's path use the adapters, as fractions of ln K
        (`Router.normalised_entropy`, `Router.normalised_balance`): `entropy` 1 for uniform routes,
        0 when every task uses one adapter; `balance` 1 when the tasks together use every adapter
        alike, 0 when all use the same one. None when nothing is routed (no adapters, or one per layer)."""
        routes = self.router.routes()
        if not self.router.routed_deciding(routes):
            return {"entropy": None, "balance": None}
        return {"entropy": float(self.router.normalised_entropy(routes)), "balance": float(self.router.normalised_balance(routes))}

    def parameter_counts(self) -> dict[str, int]:
        backbone = sum(p.numel() for p in self.backbone.parameters())
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        total = sum(p.numel() for p in self.parameters())
        return {"trainable": trainable, "backbone": backbone, "total": total}

    def bundle_state(self) -> dict[str, torch.Tensor]:
        """Everything but the backbone: what a bundle stores."""
        return {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items() if not k.startswith("backbone.")}


def bank_names(placement: str, virtual_node: bool = False, embeddings: bool = False) -> tuple[str, ...]:
    """The state-dict prefixes of a placement's banks: `adapters` (every placement) and, for
    `mlp-both`, `out_adapters` (beside each MLP's second Linear; expert i pairs with expert i);
    with `virtual_node` (adapters on the virtual node's MLP) `vn_adapters` and `vn_out_adapters`;
    with `embeddings` (on the atom encoder's output) `embedding_adapters`, layer 0 only."""
    names = ("adapters", "out_adapters") if placement == "mlp-both" else ("adapters",)
    names += ("vn_adapters", "vn_out_adapters") if virtual_node else ()
    return names + (("embedding_adapters",) if embeddings else ())


def _bank_widths(backbone: Backbone, spec: ModelSpec) -> tuple[int, int]:
    """(width an adapter reads, width of its update): the node states' d for both, but d -> 2d (the
    GIN MLP's hidden width) for `mlp-hidden` and `mlp-both`'s first bank, 2d -> d for `mlp-out`."""
    d = backbone.spec.hidden
    if spec.placement in ("mlp-hidden", "mlp-both"):
        return d, backbone.convs[0].conv.nn[0].out_features
    if spec.placement == "mlp-out":
        return backbone.convs[0].conv.nn[3].in_features, d
    return d, d


def expert_readout(base: torch.Tensor, deltas: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
    """logit[b, t] = w_t . (z_0[b] + sum_k R_tk D[b, k]) + c_t for every task at once.

    base z_0 [B, d], deltas D [B, K, d], weight W [T, d], bias c [T], gates R [T, K] -> [B, T].
    Computed as z_0 W^T + c + einsum("bkt,tk->bt", D W^T, R): B*K*d*T multiply-adds for the
    [B, K, T] expert logits (K times the mixture read-out's B*d*T), no [B, T, d] tensor."""
    return torch.nn.functional.linear(base, weight, bias) + torch.einsum("bkt,tk->bt", deltas @ weight.t(), gates)


def _replicate_graph(num_nodes: int, vn, edge_index, edge_attr, batch, copies: int, num_graphs: int):
    """The graph structure (virtual node, edges, batch vector) of `copies` stacked copies of a batch."""
    node_shift = (torch.arange(copies, device=edge_index.device) * num_nodes).repeat_interleave(edge_index.size(1))
    graph_shift = (torch.arange(copies, device=batch.device) * num_graphs).repeat_interleave(num_nodes)
    return (
        vn.repeat(copies, 1) if vn is not None else None,
        edge_index.repeat(1, copies) + node_shift,
        edge_attr.repeat(copies, 1),
        batch.repeat(copies) + graph_shift,
    )


def _replicate(h, vn, edge_index, edge_attr, batch, groups: int, num_graphs: int):
    """Stack `groups` copies of a batch (each group is routed by its own part)."""
    return (h.repeat(groups, 1), *_replicate_graph(h.size(0), vn, edge_index, edge_attr, batch, groups, num_graphs))
