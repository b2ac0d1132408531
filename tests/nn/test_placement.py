"""Adapters in the GIN MLP: beside it (`placement: mlp`, MLP(z) + s f(z) on the MLP's input z,
before the layer's BatchNorm), on its hidden layer (`mlp-hidden`, W_1 z + s f(z) before the
MLP's BatchNorm and ReLU) and beside its second Linear (`mlp-out`, W_2 u + s f(u), u that Linear's
input), under both read-outs; checked against forward passes written by hand. `mlp-both+vn` is
`mlp-both` with a pair of banks more on the virtual node's MLP (`ModelSpec.virtual_node_adapters`);
`mlp-both+vn5` gives those banks a rank of their own (`ModelSpec.virtual_node_rank`), `+emb7` the
embeddings' bank (`ModelSpec.embeddings_rank`);
`+emb` adds the bank on the atom encoder's embeddings (`ModelSpec.embedding_adapters`), checked
against the multi-hot product it stands for."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from model_kit import SMILES, tiny_batch
from torch_geometric.nn import global_add_pool

from cft.nn.adapters import ACTIVATIONS
from cft.nn.backbone import Backbone
from cft.nn.model import CftModel
from cft.spec import BackboneSpec, ModelSpec, PartSpec


def mlp_model(readout="task", tasks=4, layers=(0, 1), k=3, num_layers=2, pooling="mean", placement="mlp", zero=False) -> CftModel:
    """A tiny model with non-trivial BatchNorm statistics (a fresh BN is the identity, which would
    hide where the update enters) and, unless `zero`, adapters that are not zero."""
    torch.manual_seed(0)
    bb = BackboneSpec(num_layers=num_layers, hidden=16, dropout=0.0, pooling=pooling)
    names = [f"t{i}" for i in range(tasks)]
    part = PartSpec(name="p", tasks=names, layers=list(layers), num_adapters=k, rank=3, embed_dim=8, threshold=0.0)
    placement, emb_rank = (placement.removesuffix("7"), 7) if placement.endswith("+emb7") else (placement, None)  # the embeddings' bank at rank 7
    placement, embeddings = placement.removesuffix("+emb"), placement.endswith("+emb")
    placement, vn_rank = (placement.removesuffix("5"), 5) if placement.endswith("+vn5") else (placement, None)  # the virtual node's banks at rank 5
    placement, virtual_node = placement.removesuffix("+vn"), placement.endswith("+vn")
    spec = ModelSpec(backbone=bb, tasks=names, kinds=["binary"] * tasks, parts=[part], readout=readout, scale=0.7, placement=placement,
                     virtual_node_adapters=virtual_node, virtual_node_rank=vn_rank, embedding_adapters=embeddings, embeddings_rank=emb_rank)
    model = CftModel(Backbone(bb), spec, [np.eye(tasks, dtype=np.float32)])
    with torch.no_grad():
        vn_norms = [m for mlp in model.backbone.vn_mlps for m in mlp if isinstance(m, torch.nn.BatchNorm1d)]
        for norm in list(model.backbone.norms) + vn_norms:
            norm.running_mean.normal_(0, 0.3)
            norm.running_var.uniform_(0.3, 3.0)
            norm.weight.normal_(1.0, 0.5)
        if not zero:
            for bank in all_banks(model):
                bank.V.normal_(0, 0.5)
    return model.eval()


def all_banks(model) -> list:
    """Every adapter bank: one per insertion layer, two for `mlp-both`, two more per layer but the
    last on the virtual node's MLP."""
    return [bank for banks in model.adapter_banks().values() for bank in banks.values()]


def embedding_update_by_hand(model, x, weights) -> torch.Tensor:
    """s sum_i w_i V_i phi(U_i m(x)) [N, d] with m(x) the atom's multi-hot vector over every
    feature's values, built explicitly (the bank looks its columns up instead)."""
    bank = model.embedding_adapters["0"]
    tables = model.backbone.atom_encoder.atom_embedding_list
    multi_hot = torch.cat([torch.nn.functional.one_hot(x[:, f].long(), t.num_embeddings) for f, t in enumerate(tables)], dim=1).float()
    act = ACTIVATIONS[bank.activation](torch.einsum("nc,krc->nkr", multi_hot, bank.U))
    return model.spec.scale * torch.einsum("nkr,kdr->nd", act * weights.unsqueeze(-1), bank.V)


def by_hand(model, data, expert_weights=None) -> torch.Tensor:
    """Pooled node states [B, d] with each insertion layer's bank added beside its GIN MLP:
    mixture weights alpha(x) below the expert layer, `expert_weights` [K] (or the mixture's when
    None) at the expert layer; the MLP and its input written out from the layer's own modules."""
    bb, router = model.backbone, model.router
    emb = [p.propagated_embeddings() for p in router.parts]
    routes = router.routes(emb)
    h, vn = bb.encode(data.x, data.num_graphs)
    first = router.layers[0]
    for i in range(first):
        h, vn = bb.layer(i, h, vn, data.edge_index, data.edge_attr, data.batch)
    alphas = router.alphas([bb.pool(h, data.batch, data.num_graphs)], routes, emb)
    if model.spec.embedding_adapters:  # under layer 0's weights, before layer 0
        h = h + embedding_update_by_hand(model, data.x, alphas[0][0][data.batch] if 0 in alphas else expert_weights.expand(h.size(0), -1))
    for i in range(first, bb.num_layers):
        h_in = h + vn[data.batch]
        gin = bb.convs[i]
        z = (1 + gin.conv.eps) * h_in + gin.conv.propagate(data.edge_index, x=(h_in, h_in), edge_attr=gin.bond_encoder(data.edge_attr))
        linear1, mlp_norm, relu, linear2 = gin.conv.nn

        def update(inputs, banks=model.adapters):
            if i not in router.layers:
                return 0.0
            weights = alphas[i][0][data.batch] if i in alphas else expert_weights.expand(inputs.size(0), -1)
            return model.spec.scale * banks[str(i)](inputs, weights)

        if model.spec.placement == "mlp":
            pre = linear2(relu(mlp_norm(linear1(z)))) + update(z)
        elif model.spec.placement == "mlp-out":  # beside the second Linear, on its input
            hidden = relu(mlp_norm(linear1(z)))
            pre = linear2(hidden) + update(hidden)
        elif model.spec.placement == "mlp-both":  # the first bank on the first Linear, the second beside the second
            hidden = relu(mlp_norm(linear1(z) + update(z)))
            pre = linear2(hidden) + update(hidden, model.out_adapters)
        else:  # mlp-hidden: on the first Linear's output
            pre = linear2(relu(mlp_norm(linear1(z) + update(z))))
        out = bb.norms[i](pre)
        last = i == bb.num_layers - 1
        out = out if last else torch.relu(out)
        if not last:
            pooled = global_add_pool(h_in, data.batch, size=data.num_graphs) + vn
            if model.spec.virtual_node_adapters and i in router.layers:  # per graph, the same weights as its nodes
                weights = alphas[i][0] if i in alphas else expert_weights.expand(pooled.size(0), -1)
                first, first_norm, first_relu, second, second_norm, second_relu = bb.vn_mlps[i]
                hidden = first_relu(first_norm(first(pooled) + model.spec.scale * model.vn_adapters[str(i)](pooled, weights)))
                update = second_relu(second_norm(second(hidden) + model.spec.scale * model.vn_out_adapters[str(i)](hidden, weights)))
            else:
                update = bb.vn_mlps[i](pooled)
            vn = vn + update if bb.spec.residual else update
        h = out + h_in if bb.spec.residual else out
    return bb.pool(h, data.batch, data.num_graphs)


def per_task_reference(model, data) -> torch.Tensor:
    """Per task and per expert, by hand: logit_t = w_t . (z_0 + sum_k R_tk (z_k - z_0)) + c_t, z_k the
    pooled output of the network with expert k alone beside the expert layer's MLP."""
    expert = model.router.expert_layer
    gates = model.router.routes()[expert]
    k = gates.size(1)
    z0 = by_hand(model, data, torch.zeros(k))
    zs = [by_hand(model, data, torch.eye(k)[j]) for j in range(k)]
    w, c = model.head.weight, model.head.bias
    out = torch.zeros(data.num_graphs, len(model.spec.tasks))
    for t in range(len(model.spec.tasks)):
        rep = z0 + sum(gates[t, j] * (zs[j] - z0) for j in range(k))
        out[:, t] = rep @ w[t] + c[t]
    return out


def own_route_logits(model, data) -> torch.Tensor:
    """Task t's own path: the network with s sum_k R_tk f_k(z) beside the expert layer's MLP."""
    gates = model.router.routes()[model.router.expert_layer]
    out = torch.zeros(data.num_graphs, len(model.spec.tasks))
    for t in range(len(model.spec.tasks)):
        out[:, t] = model.head(by_hand(model, data, gates[t]))[:, t]
    return out


def test_the_mlp_input_is_gineconvs_own():
    """`GINLayer.aggregate` + the MLP is GINEConv's forward; an adapter returning None adds nothing."""
    model = mlp_model()
    gin, data = model.backbone.convs[0], tiny_batch()
    h = torch.randn(data.x.size(0), 16)
    with torch.no_grad():
        plain = gin(h, data.edge_index, data.edge_attr)
        assert torch.allclose(gin(h, data.edge_index, data.edge_attr, lambda z: None), plain, atol=1e-6)
        assert torch.allclose(gin.conv.nn(gin.aggregate(h, data.edge_index, data.edge_attr)), plain, atol=1e-6)


@pytest.mark.parametrize("placement", ["mlp", "mlp-hidden", "mlp-out", "mlp-both", "mlp-both+vn", "mlp-both+vn5", "mlp-both+vn+emb", "mlp-both+vn5+emb7", "mlp+emb"])
@pytest.mark.parametrize("readout", ["task", "mixture"])
def test_zero_initialised_adapters_start_at_the_backbone(readout, placement):
    model = mlp_model(readout=readout, zero=True, placement=placement)
    data = tiny_batch()
    with torch.no_grad():
        assert torch.allclose(model(data), model.head(model.backbone(data)), atol=1e-6)


@pytest.mark.parametrize("placement", ["mlp", "mlp-hidden", "mlp-out", "mlp-both", "mlp-both+vn", "mlp-both+vn5", "mlp-both+vn+emb", "mlp-both+vn5+emb7", "mlp+emb"])
def test_mixture_readout_beside_the_mlp_equals_the_hand_written_pass(placement):
    model = mlp_model(readout="mixture", placement=placement)
    data = tiny_batch()
    with torch.no_grad():
        assert torch.allclose(model(data), model.head(by_hand(model, data)), atol=1e-5)


@pytest.mark.parametrize("case", [
    {"layers": (0, 1)},  # experts in the last layer, mean pooling: the pooled path through BN's gain
    {"layers": (1,)},
    {"layers": (0,)},  # experts below the last layer: K + 1 stacked copies
    {"layers": (0, 1), "pooling": "max"},  # non-linear pooling: stacked copies
    {"layers": (0, 2), "num_layers": 3, "k": 4},
    {"layers": (0, 1), "k": 1},  # one expert (the recipes' K=1): one adapted pass into the mixture read-out
    {"layers": (0,), "k": 1},
])
@pytest.mark.parametrize("placement", ["mlp", "mlp-hidden", "mlp-out", "mlp-both", "mlp-both+vn", "mlp-both+vn5", "mlp-both+vn+emb"])
def test_einsum_readout_beside_the_mlp_equals_a_per_task_reference_loop(case, placement):
    if placement.endswith("+emb") and (0 not in case["layers"] or case["layers"] == (0,)):
        # the embeddings' bank needs layer 0 adapted, and a layer above it under the task read-out
        with pytest.raises(ValueError, match="atom embeddings"):
            mlp_model(**case, placement=placement)
        return
    model = mlp_model(**case, placement=placement)
    data = tiny_batch()
    with torch.no_grad():
        got = model(data)
        want = per_task_reference(model, data)
    assert got.shape == (len(SMILES), 4)
    assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()


def test_at_the_last_layer_each_task_reads_exactly_its_own_route():
    """Experts in the last layer, mean pooling: BN in eval mode and the pooling are affine, so the
    read-out is task t's own path through the network."""
    model = mlp_model(layers=(0, 1))
    data = tiny_batch()
    with torch.no_grad():
        assert torch.allclose(model(data), own_route_logits(model, data), atol=1e-5)


@pytest.mark.parametrize("placement", ["mlp", "mlp-out", "mlp-hidden", "mlp-both", "mlp-both+vn", "mlp-both+vn+emb"])
def test_the_pooled_path_equals_the_stacked_copies(placement):
    """The last-layer shortcut (D_k = s g * V_k pool(phi(U_k z)); for `mlp-hidden` the expert's change
    of the MLP's hidden units pooled before W_2) against running the layer K + 1 times."""
    model = mlp_model(layers=(0, 1), placement=placement)
    data = tiny_batch()
    with torch.no_grad():
        fast = model(data)
        model.backbone.spec = model.backbone.spec.model_copy(update={"pooling": "sum"})
        sum_fast = model(data)
        model.backbone.training = True  # the shortcut needs eval-mode BN; only the flag, not the norms
        stacked = model(data)
        model.backbone.training = False
    assert torch.allclose(sum_fast, stacked, atol=1e-4), (sum_fast - stacked).abs().max()
    assert not torch.allclose(fast, sum_fast, atol=1e-3), "mean and sum pooling differ: the comparison is not vacuous"


@pytest.mark.parametrize("layers", [(0, 1), (0,)])
@pytest.mark.parametrize("placement", ["output", "mlp", "mlp-hidden", "mlp-both", "mlp-both+vn", "output+emb", "mlp-both+vn+emb"])
def test_one_expert_takes_one_adapted_pass_with_the_experts_logits_and_gradients(placement, layers, monkeypatch):
    """K = 1 in a trained model: every gate is 1, so the read-out runs the adapted layers once
    (`CftModel._lone_expert`); its logits and gradients are those of the expert path it skips."""
    if placement.endswith("+emb") and layers == (0,):  # under the task read-out the embeddings' bank needs a layer above 0
        with pytest.raises(ValueError, match="insertion layer above 0"):
            mlp_model(layers=layers, k=1, placement=placement)
        return
    model = mlp_model(layers=layers, k=1, placement=placement)
    data = tiny_batch()
    assert model._lone_expert() and not mlp_model(layers=layers, k=2, placement=placement)._lone_expert()
    fast = model(data)
    fast.square().sum().backward()
    fast_grads = [b.U.grad.clone() for b in all_banks(model)] + [model.head.weight.grad.clone()]
    model.zero_grad()
    monkeypatch.setattr(CftModel, "_lone_expert", lambda self: False)
    slow = model(data)
    slow.square().sum().backward()
    slow_grads = [b.U.grad for b in all_banks(model)] + [model.head.weight.grad]
    assert torch.allclose(fast, slow, atol=1e-5), (fast - slow).abs().max()
    for a, b in zip(fast_grads, slow_grads, strict=True):
        assert torch.allclose(a, b, atol=1e-4) and a.abs().sum() > 0


@pytest.mark.parametrize("placement", ["mlp", "mlp-both", "mlp-both+vn", "mlp-both+vn+emb"])
def test_the_placement_changes_the_function_and_gradients_reach_every_bank(placement):
    # the same weights elsewhere: on the layer output (`mlp`), the first bank alone (`mlp-both`), or
    # without the virtual node's banks (`mlp-both+vn`) or the embeddings' (`+emb`)
    mlp = mlp_model(placement=placement)
    out = mlp_model(placement={"mlp": "output", "mlp-both": "mlp-hidden", "mlp-both+vn": "mlp-both", "mlp-both+vn+emb": "mlp-both+vn"}[placement])
    out.load_state_dict(mlp.state_dict(), strict=placement == "mlp")
    data = tiny_batch()
    mlp.train()
    logits = mlp(data)
    assert not torch.allclose(logits, out(data), atol=1e-3)
    logits.sum().backward()
    banks = all_banks(mlp)
    assert len(banks) == {"mlp": 2, "mlp-both": 4, "mlp-both+vn": 6, "mlp-both+vn+emb": 7}[placement], "layers 0 and 1; the virtual node's banks in layer 0 only"
    for bank in banks:
        assert bank.U.grad.abs().sum() > 0 and bank.V.grad.abs().sum() > 0


def test_the_hidden_placement_updates_the_mlps_hidden_width():
    model = mlp_model(placement="mlp-hidden")
    bank = model.adapters["0"]
    assert bank.V.shape == (3, 32, 3) and bank.U.shape == (3, 3, 16), "f: d -> 2d, the first Linear's output"
    out = mlp_model(placement="mlp")
    assert out.adapters["0"].V.shape == (3, 16, 3)
    second = mlp_model(placement="mlp-out").adapters["0"]
    assert second.U.shape == (3, 3, 32) and second.V.shape == (3, 16, 3), "f: 2d -> d, the second Linear's input to its output"
    both = mlp_model(placement="mlp-both")
    assert both.adapters["0"].V.shape == (3, 32, 3) and both.out_adapters["0"].U.shape == (3, 3, 32), "both: mlp-hidden's bank and mlp-out's"
    assert not hasattr(model, "out_adapters"), "one bank per layer but for mlp-both"


@pytest.mark.parametrize("placement", ["mlp", "mlp-hidden", "mlp-out", "mlp-both"])
def test_a_gcn_backbone_refuses_the_mlp_placements(placement):
    bb = BackboneSpec(arch="gcn", num_layers=2, hidden=16)
    part = PartSpec(name="p", tasks=["a"], layers=[0], num_adapters=2, rank=2)
    with pytest.raises(ValueError, match="gin backbone"):
        ModelSpec(backbone=bb, tasks=["a"], kinds=["binary"], parts=[part], placement=placement)


def test_a_header_without_placement_means_the_output_placement():
    raw = mlp_model().spec.to_dict()
    assert raw["placement"] == "mlp"
    del raw["placement"]
    assert ModelSpec.from_dict(raw).placement == "output"


def test_the_virtual_node_and_embeddings_banks_take_their_own_rank():
    model = mlp_model(placement="mlp-both+vn5+emb7")
    assert {name: {bank.rank for bank in banks.values()} for name, banks in model.adapter_banks().items()} == {
        "adapters": {3}, "out_adapters": {3}, "vn_adapters": {5}, "vn_out_adapters": {5}, "embedding_adapters": {7}}
    for flag, width in (("virtual_node_adapters", "virtual_node_rank"), ("embedding_adapters", "embeddings_rank")):
        with pytest.raises(ValueError, match=width):  # a width for a bank the model does not have
            ModelSpec(**{**model.spec.model_dump(), flag: False})
