"""The pretrained GNN as torch modules: GIN (or GCN) with an optional virtual node, on OGB
atom/bond encoders.

The layer structure follows the OGB molecule example (`GNN_node_Virtualnode`): for each layer,
add the virtual node to every atom, message passing, batch norm, ReLU (not after the last
layer), dropout; the virtual node is updated from a sum-pool of the layer's input. The
model is exposed layer by layer (`encode`, `layer`, `pool`) so that adapters can be inserted
after any layer without copying the backbone. Saving, loading and fingerprints live in
`cft.files.backbone`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from ogb.graphproppred.mol_encoder import AtomEncoder, BondEncoder
from torch import nn
from torch_geometric.nn import GINEConv, MessagePassing, global_max_pool
from torch_geometric.nn.conv.gcn_conv import gcn_norm

from cft.nn.aggregation import IndexAddSum, mean_pool, sum_pool
from cft.nn.constants import frozen_value
from cft.nn.frozen import frozen_linear, frozen_linear_low_rank, merges_low_rank
from cft.spec import BackboneSpec


def bond_embeddings(encoder: BondEncoder, edge_attr: torch.Tensor) -> torch.Tensor:
    """`encoder(edge_attr)`, [E, d], as one lookup per edge instead of one per bond feature.

    OGB's BondEncoder sums one embedding per bond feature, e_i = sum_f emb_f(a_if), and the bond
    features take few values (type, stereo, conjugation: 5 x 6 x 2 = 60 combinations). So the
    encoder runs once on every combination, table = encoder(C) [60, d] (C: the combinations in
    row-major order), and edge i reads row c_i = (a_i0 * 6 + a_i1) * 2 + a_i2: per edge one
    gather of d values instead of three gathers and two sums. The rows are the encoder's own sums,
    in its order (the same floats); gradients reach the embeddings through the table. A frozen
    encoder's table is computed once and kept while its weights stay unchanged (`frozen_value`).
    edge_attr: [E, F] integer features (any integer dtype)."""
    tables = [embedding.weight for embedding in encoder.bond_embedding_list]
    table = frozen_value(encoder, "table", lambda: _bond_table(encoder), *tables)  # [prod(dims), d]
    dims = [t.size(0) for t in tables]
    codes = edge_attr[:, 0].long()
    for f in range(1, len(dims)):
        codes = codes * dims[f] + edge_attr[:, f].long()
    return F.embedding(codes, table)


def _bond_table(encoder: BondEncoder) -> torch.Tensor:
    """encoder(C) [prod(dims), d] for C every combination of the bond features, in row-major order."""
    dims = [embedding.num_embeddings for embedding in encoder.bond_embedding_list]
    device = encoder.bond_embedding_list[0].weight.device
    combinations = torch.cartesian_prod(*(torch.arange(n, device=device) for n in dims)).view(-1, len(dims))
    return encoder(combinations)


class OgbGCNConv(MessagePassing):
    """GCN with bond features as in the OGB example; normalisation from PyG's gcn_norm."""

    def __init__(self, hidden: int):
        super().__init__(aggr=IndexAddSum())  # "add", by index_add_ on a CPU (cft.nn.aggregation)
        self.linear = nn.Linear(hidden, hidden)
        self.root_emb = nn.Embedding(1, hidden)
        self.bond_encoder = BondEncoder(hidden)

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor, edge_attr: torch.Tensor) -> torch.Tensor:
        x = self.linear(x)
        edge_embedding = bond_embeddings(self.bond_encoder, edge_attr)
        num_edges = edge_index.size(1)
        # gcn_norm appends one self-loop per node after the real edges: its weight is 1/deg
        _, weight = gcn_norm(edge_index, None, x.size(0), add_self_loops=True)
        edge_norm, self_norm = weight[:num_edges], weight[num_edges:]
        out = self.propagate(edge_index, x=x, edge_attr=edge_embedding, norm=edge_norm)
        return out + F.relu(x + self.root_emb.weight) * self_norm.view(-1, 1)

    def message(self, x_j: torch.Tensor, edge_attr: torch.Tensor, norm: torch.Tensor) -> torch.Tensor:
        return norm.view(-1, 1) * F.relu(x_j + edge_attr)


class GINLayer(nn.Module):
    """OGB's GIN layer: PyG's GINEConv on bond embeddings from a per-layer BondEncoder."""

    def __init__(self, hidden: int):
        super().__init__()
        mlp = nn.Sequential(nn.Linear(hidden, 2 * hidden), nn.BatchNorm1d(2 * hidden), nn.ReLU(), nn.Linear(2 * hidden, hidden))
        self.conv = GINEConv(mlp, train_eps=True, aggr=IndexAddSum())  # "add", by index_add_ on a CPU (cft.nn.aggregation)
        self.bond_encoder = BondEncoder(hidden)

    def forward(
        self, x: torch.Tensor, edge_index: torch.Tensor, edge_attr: torch.Tensor, mlp_adapter=None, at: str = "mlp", norm: nn.BatchNorm1d | None = None,
    ) -> torch.Tensor:
        """MLP(z), z [N, d] `aggregate`'s output, with an adapter's update (None adds nothing):
        at `mlp`, MLP(z) + a, a = mlp_adapter(z) [N, d]; at `mlp-hidden`, W_2 ReLU(BN(W_1 z + a)) + b_2,
        a = mlp_adapter(z) [N, 2d] added to the MLP's first Linear; at `mlp-out`, W_2 u + b_2 + a,
        a = mlp_adapter(u) [N, d] beside the second Linear, on its input u = ReLU(BN(W_1 z + b_1)) [N, 2d];
        at `mlp-both`, mlp_adapter = (into_hidden, beside_second), the two at once:
        W_2 u + b_2 + beside_second(u), u = ReLU(BN(W_1 z + b_1 + into_hidden(z))).

        `norm`: the layer's BatchNorm after the MLP, applied here, so the result is norm(MLP(z) + a)
        [N, d]. A BatchNorm in eval mode is folded into the Linear before it (`_linear_then_norm`)
        and each update enters that Linear's output scaled by the norm's gain, in place
        (`_add_update`): the same values within float rounding, two [N, c] passes fewer forward and
        backward. A linear bank without per-node weights beside a frozen Linear is merged into its
        weight for the step instead (`_linear_then_norm`). In training mode (batch statistics) the
        norms run as modules: the values of PyG's `GINEConv` forward and the norm. Inside
        `cft.nn.frozen.bf16_frozen_products` the frozen Linears' products run in bf16 (`frozen_linear`)."""
        z = self.aggregate(x, edge_index, edge_attr)
        first, inner, _, second = self.conv.nn  # Linear(d, 2d), BatchNorm1d(2d), ReLU, Linear(2d, d)
        into_hidden, beside_second = {"mlp": (None, None), "mlp-hidden": (mlp_adapter, None), "mlp-out": (None, mlp_adapter),
                                      "mlp-both": mlp_adapter or (None, None)}[at]
        hidden, inner_gain = _linear_then_norm(first, inner, z, into_hidden)
        u = _relu_after_norm(hidden, inner, inner_gain)
        out, gain = _linear_then_norm(second, norm, u, beside_second)
        if at == "mlp":
            out = _add_update(out, mlp_adapter, z, gain)
        return out if norm is None or gain is not None else norm(out)

    def aggregate(self, x: torch.Tensor, edge_index: torch.Tensor, edge_attr: torch.Tensor) -> torch.Tensor:
        """The MLP's input z_i = (1 + eps) x_i + sum_{j in N(i)} ReLU(x_j + e_ji), [N, d]: GINEConv's
        forward up to its MLP (its own propagate and eps), so that an adapter can read it."""
        messages = self.conv.propagate(edge_index, x=(x, x), edge_attr=bond_embeddings(self.bond_encoder, edge_attr))
        return torch.addcmul(messages, 1 + self.conv.eps, x)  # one pass, not a product and a sum


def _add_update(value: torch.Tensor, adapter, x: torch.Tensor, gain: torch.Tensor | None = None) -> torch.Tensor:
    """value + gain * adapter(x), value [N, c] a Linear's fresh output, gain [c] (None: 1).

    An adapter with `add_to` (`cft.nn.adapters.BankUpdate`) accumulates into `value` in place with
    one matrix product; any other callable returns its update, or None (a probe that only reads
    x), which adds nothing; None adds nothing."""
    if adapter is None:
        return value
    if hasattr(adapter, "add_to"):
        return adapter.add_to(value, x, gain)
    update = adapter(x)
    if update is None:
        return value
    return value + (update if gain is None else gain * update)


def _linear_then_norm(linear: nn.Module, norm: nn.BatchNorm1d | None, x: torch.Tensor, adapter=None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """linear(x) + adapter(x) [N, c], with `norm` folded in when it maps by its running statistics
    (eval mode): BN(W x + b) = (g W) x + g (b - mu) + beta, g = gamma / sqrt(var + eps) [c], one
    Linear of [c, d] products instead of a pass over [N, c], the update scaled by g (`_add_update`;
    None adds nothing). Returns (output, g), or (output, None) when there is no norm or it uses
    batch statistics (training mode): the caller applies it then.

    An update that is one low-rank matrix B A (a linear bank without per-node weights,
    `BankUpdate.low_rank_factors`) beside a frozen Linear is merged into its weight,
    x (g W + g s B A)^T + b' in one product (`frozen_linear_low_rank`, where `merges_low_rank`
    holds); any other update is computed on its own and added.

    A Linear that another library has wrapped or hooked (PEFT's LoRA layers, a quantised Linear:
    anything but a plain `nn.Linear`, `_plain_linear`) is called as the module it is, never read
    through its `.weight`, which would skip its own update; its norm is then applied by the caller."""
    if not _plain_linear(linear):
        return _add_update(linear(x), adapter, x), None
    weight, bias, gain = linear.weight, linear.bias, None
    if norm is not None and not norm.training and norm.track_running_stats and norm.affine:
        # a frozen Linear and norm fold once, not at every step (`frozen_value`)
        weight, bias, gain = frozen_value(
            linear, "folded", lambda: _folded(linear, norm), linear.weight, linear.bias, norm.weight, norm.bias, norm.running_mean, norm.running_var
        )
    factors = adapter.low_rank_factors(gain) if hasattr(adapter, "low_rank_factors") and merges_low_rank(x, weight, bias) else None
    if factors is not None:
        return frozen_linear_low_rank(x, weight, bias, *factors), gain
    return _add_update(frozen_linear(x, weight, bias, owner=linear), adapter, x, gain), gain


def _folded(linear: nn.Linear, norm: nn.BatchNorm1d) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(g W [c, d], g (b - mu) + beta [c], g [c]), g = gamma / sqrt(var + eps): `norm` after `linear` as one Linear."""
    gain = norm.weight / torch.sqrt(norm.running_var + norm.eps)
    return linear.weight * gain.unsqueeze(1), (linear.bias - norm.running_mean) * gain + norm.bias, gain


def _plain_linear(module: nn.Module) -> bool:
    """Whether `module` computes exactly F.linear(x, module.weight, module.bias): an `nn.Linear`
    whose forward is nn.Linear's, without forward hooks. Only such a Linear may be folded with
    its norm or run as a bf16 product from its weights."""
    return (isinstance(module, nn.Linear) and type(module).forward is nn.Linear.forward
            and not module._forward_hooks and not module._forward_pre_hooks)


def _virtual_node_mlp(mlp: nn.Sequential, x: torch.Tensor, adapter=None) -> torch.Tensor:
    """mlp(x) for the virtual node's Sequential(Linear, BN, ReLU, Linear, BN, ReLU), x [G, d] -> [G, d],
    with each eval-mode BatchNorm folded into the Linear before it (`_linear_then_norm`): the same
    values within float rounding, and its products in bf16 inside `bf16_frozen_products` when frozen.

    `adapter` = (into_hidden, beside_second), either None, as `GINLayer.forward` takes at `mlp-both`:
    ReLU(BN_2(W_2 u + b_2 + beside_second(u))), u = ReLU(BN_1(W_1 x + b_1 + into_hidden(x))) [G, 2d],
    each update scaled by its norm's gain when that norm is folded (`_add_update`)."""
    into_hidden, beside_second = adapter or (None, None)
    first, first_norm, _, second, second_norm, _ = mlp
    hidden, gain = _linear_then_norm(first, first_norm, x, into_hidden)
    u = _relu_after_norm(hidden, first_norm, gain)
    out, gain = _linear_then_norm(second, second_norm, u, beside_second)
    return _relu_after_norm(out, second_norm, gain)


def _relu_after_norm(value: torch.Tensor, norm: nn.BatchNorm1d, gain: torch.Tensor | None) -> torch.Tensor:
    """ReLU(norm(value)) after `_linear_then_norm`: with the norm folded in (gain not None) `value`
    is already normed, a Linear's fresh output its backward does not keep, so ReLU overwrites it."""
    return torch.relu_(value) if gain is not None else F.relu(norm(value))


POOLING_FUNCTIONS = {"mean": mean_pool, "sum": sum_pool, "max": global_max_pool}


class Backbone(nn.Module):
    def __init__(self, spec: BackboneSpec):
        super().__init__()
        self.spec = spec
        # the rate of the dropout after each layer in training mode: spec.dropout, unless the model
        # around a frozen backbone sets another (CftModel's frozen_dropout); not part of the weights
        self.dropout = spec.dropout
        d = spec.hidden
        self.atom_encoder = AtomEncoder(d)
        self.convs = nn.ModuleList([GINLayer(d) if spec.arch == "gin" else OgbGCNConv(d) for _ in range(spec.num_layers)])
        self.norms = nn.ModuleList([nn.BatchNorm1d(d) for _ in range(spec.num_layers)])
        if spec.virtual_node:
            self.vn_embedding = nn.Embedding(1, d)
            nn.init.zeros_(self.vn_embedding.weight)
            self.vn_mlps = nn.ModuleList(
                [
                    nn.Sequential(nn.Linear(d, 2 * d), nn.BatchNorm1d(2 * d), nn.ReLU(), nn.Linear(2 * d, d), nn.BatchNorm1d(d), nn.ReLU())
                    for _ in range(spec.num_layers - 1)
                ]
            )

    @property
    def num_layers(self) -> int:
        return self.spec.num_layers

    def encode(self, x: torch.Tensor, num_graphs: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        h = self.atom_encoder(x.long())  # features are stored as uint8
        vn = self.vn_embedding.weight.expand(num_graphs, -1) if self.spec.virtual_node else None
        return h, vn

    def layer(
        self, index: int, h: torch.Tensor, vn: torch.Tensor | None, edge_index: torch.Tensor, edge_attr: torch.Tensor, batch: torch.Tensor,
        mlp_adapter=None, at: str = "mlp", vn_adapter=None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Layer `index`: returns (node states after it, virtual node for the next layer).

        `mlp_adapter` (GIN only): a function of the GIN MLP's input z [N, d] (or None) whose update is
        added to the MLP's output (`at="mlp"`, before the layer's BatchNorm) or to its hidden layer
        (`at="mlp-hidden"`); at `mlp-out` it is a function of the second Linear's input [N, 2d]
        instead, its update added to that Linear's output; at `mlp-both` a pair of the two; see
        `GINLayer.forward`. `vn_adapter`: such a pair for the virtual node's MLP, whose rows are
        graphs ([B, d] in, [B, 2d] between its Linears; `_virtual_node_mlp`); not for the last layer,
        which updates no virtual node."""
        h_in = h + vn.index_select(0, batch) if vn is not None else h  # index_select: a cheaper backward than vn[batch]
        conv = self.convs[index]
        if mlp_adapter is not None and not isinstance(conv, GINLayer):
            raise ValueError("an adapter beside the GIN MLP needs a gin backbone")
        if isinstance(conv, GINLayer):  # it applies the norm, folded into its MLP's second Linear when it can
            out = conv(h_in, edge_index, edge_attr, mlp_adapter, at, norm=self.norms[index])
        else:
            out = self.norms[index](conv(h_in, edge_index, edge_attr))
        last = index == self.spec.num_layers - 1
        # `out` is a fresh tensor whose backward needs nothing of it (a BatchNorm keeps its input),
        # so the ReLU overwrites it rather than making another [N, d]
        out = F.dropout(out if last else F.relu(out, inplace=True), self.dropout, training=self.training)
        if self.spec.residual:
            out = out + h_in
        if vn_adapter is not None and (vn is None or last):
            raise ValueError(f"layer {index} updates no virtual node: an adapter for its MLP has nothing to act on")
        if vn is not None and not last:
            update = _virtual_node_mlp(self.vn_mlps[index], sum_pool(h_in, batch, size=vn.size(0)) + vn, vn_adapter)
            update = F.dropout(update, self.dropout, training=self.training)
            vn = vn + update if self.spec.residual else update
        return out, vn

    def norm_gain(self, index: int) -> torch.Tensor:
        """Per-channel gain gamma / sqrt(running_var + eps) of layer `index`'s BatchNorm, [d]: in eval
        mode BN(a + b) = BN(a) + gain * b, so an update before the norm passes through it scaled."""
        norm = self.norms[index]
        return norm.weight / torch.sqrt(norm.running_var + norm.eps)

    def pool(self, h: torch.Tensor, batch: torch.Tensor, num_graphs: int) -> torch.Tensor:
        return POOLING_FUNCTIONS[self.spec.pooling](h, batch, size=num_graphs)

    def forward(self, data) -> torch.Tensor:
        """Pooled graph representation (no adapters): used by pretraining and baselines."""
        num_graphs = int(data.num_graphs)
        h, vn = self.encode(data.x, num_graphs)
        for i in range(self.spec.num_layers):
            h, vn = self.layer(i, h, vn, data.edge_index, data.edge_attr, data.batch)
        return self.pool(h, data.batch, num_graphs)

    def node_states(self, data) -> torch.Tensor:
        num_graphs = int(data.num_graphs)
        h, vn = self.encode(data.x, num_graphs)
        for i in range(self.spec.num_layers):
            h, vn = self.layer(i, h, vn, data.edge_index, data.edge_attr, data.batch)
        return h
