"""The task read-out (`readout: task`): each task reads the experts of the last insertion layer
through its own gates, in one forward pass; the mixture read-out stays as it was."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from model_kit import SMILES, tiny_batch

from cft.nn.backbone import Backbone
from cft.nn.model import CftModel
from cft.spec import BackboneSpec, ModelSpec, PartSpec


def model_with(readout="task", tasks=4, layers=(0, 1), k=3, num_layers=2, pooling="mean", relation=None, seed=0, **part_kw) -> CftModel:
    """A tiny model whose adapters are not zero (V is zero at initialisation, which would make
    every expert equal to the backbone)."""
    torch.manual_seed(seed)
    bb = BackboneSpec(num_layers=num_layers, hidden=16, dropout=0.0, pooling=pooling)
    names = [f"t{i}" for i in range(tasks)]
    part = PartSpec(name="p", tasks=names, layers=list(layers), num_adapters=k, rank=3, embed_dim=8, **{"threshold": 0.0, **part_kw})
    spec = ModelSpec(backbone=bb, tasks=names, kinds=["binary"] * tasks, parts=[part], readout=readout, scale=0.7)
    rel = np.eye(tasks, dtype=np.float32) if relation is None else relation
    model = CftModel(Backbone(bb), spec, [rel])
    with torch.no_grad():
        for bank in model.adapters.values():
            bank.V.normal_(0, 0.5)
    return model.eval()


def run_layers(model, data, stop_after=None, last_update=None):
    """Node states after the layers up to `stop_after` (default: all), with the mixture adapters
    of every insertion layer below the expert layer, then `last_update(h)` added at `stop_after`."""
    bb, router = model.backbone, model.router
    emb = [p.propagated_embeddings() for p in router.parts]
    routes = router.routes(emb)
    h, vn = bb.encode(data.x, data.num_graphs)
    first = router.layers[0]
    for i in range(first):
        h, vn = bb.layer(i, h, vn, data.edge_index, data.edge_attr, data.batch)
    alphas = router.alphas([bb.pool(h, data.batch, data.num_graphs)], routes, emb)
    for i in range(first, bb.num_layers):
        h, vn = bb.layer(i, h, vn, data.edge_index, data.edge_attr, data.batch)
        if i == stop_after:
            h = h + last_update(h)
            continue
        if i in alphas:
            h = h + model.adapters[str(i)](h, alphas[i][0][data.batch], model.spec.scale)
    return bb.pool(h, data.batch, data.num_graphs), routes


def reference_logits(model, data) -> torch.Tensor:
    """Per task and per expert, by hand: logit_t = w_t . sum_k R_tk z_k + (1 - sum_k R_tk) w_t . z_0 + c_t,
    z_k the pooled output of the whole network with only adapter k at the expert layer."""
    expert = model.router.expert_layer
    bank = model.adapters[str(expert)]
    s = model.spec.scale
    z0, routes = run_layers(model, data, expert, lambda h: torch.zeros_like(h))
    gates = routes[expert]
    zs = []
    for k in range(bank.num_adapters):
        onehot = torch.zeros(bank.num_adapters)
        onehot[k] = 1.0
        zk, _ = run_layers(model, data, expert, lambda h, onehot=onehot: s * bank(h, onehot.expand(h.size(0), -1)))
        zs.append(zk)
    w, c = model.head.weight, model.head.bias
    out = torch.zeros(data.num_graphs, len(model.spec.tasks))
    for t in range(len(model.spec.tasks)):
        rep = (1 - gates[t].sum()) * z0 + sum(gates[t, k] * zs[k] for k in range(bank.num_adapters))
        out[:, t] = rep @ w[t] + c[t]
    return out


def own_route_logits(model, data) -> torch.Tensor:
    """Per task: the network with task t's own route R_t at the expert layer, h + s sum_k R_tk f_k(h)."""
    expert = model.router.expert_layer
    bank = model.adapters[str(expert)]
    gates = model.router.routes()[expert]
    out = torch.zeros(data.num_graphs, len(model.spec.tasks))
    for t in range(len(model.spec.tasks)):
        rep, _ = run_layers(model, data, expert, lambda h, t=t: model.spec.scale * bank(h, gates[t].expand(h.size(0), -1)))
        out[:, t] = model.head(rep)[:, t]
    return out


@pytest.mark.parametrize("case", [
    {"layers": (0, 1)},
    {"layers": (1,)},
    {"layers": (0,), "num_layers": 2},  # expert layer below the last one: the stacked path
    {"layers": (0, 1), "pooling": "max"},  # non-linear pooling: the stacked path
    {"layers": (0, 2), "num_layers": 3, "k": 4},
])
def test_einsum_readout_equals_a_per_task_reference_loop(case):
    model = model_with(**case)
    data = tiny_batch()
    with torch.no_grad():
        got = model(data)
        want = reference_logits(model, data)
    assert got.shape == (len(SMILES), 4)
    assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()


def test_at_the_last_layer_each_task_reads_exactly_its_own_route():
    """With the experts at the last layer and mean pooling, the read-out is task t's own path,
    the network with h + s sum_k R_tk f_k(h): what a loop over tasks would compute."""
    model = model_with(layers=(0, 1))
    data = tiny_batch()
    with torch.no_grad():
        assert torch.allclose(model(data), own_route_logits(model, data), atol=1e-5)


def test_pooled_fast_path_equals_the_stacked_copies():
    model = model_with(layers=(0, 1))
    data = tiny_batch()
    with torch.no_grad():
        h = torch.randn(data.x.size(0), 16)
        fast = model._expert_outputs(h, None, 1, data.edge_index, data.edge_attr, data.batch, data.num_graphs)
        stacked = model._stacked_expert_outputs(h, None, 1, data.edge_index, data.edge_attr, data.batch, data.num_graphs)
    for a, b in zip(fast, stacked):
        assert torch.allclose(a, b, atol=1e-5)


def test_tasks_with_identical_routes_read_identical_representations_and_different_routes_do_not():
    model = model_with(tasks=3)
    part = model.router.parts[0]
    with torch.no_grad():
        part.task_embed[1] = part.task_embed[0]  # tasks 0 and 1: the same route
        part.task_embed[2] = -3.0 * part.task_embed[0]  # task 2: another route
        model.head.weight[:] = model.head.weight[0]  # same head everywhere: only the route differs
        model.head.bias[:] = model.head.bias[0]
        logits = model(tiny_batch())
    routes = model.router.routes()[1]
    assert torch.equal(routes[0], routes[1]) and not torch.allclose(routes[0], routes[2], atol=1e-3)
    assert torch.allclose(logits[:, 0], logits[:, 1])
    assert (logits[:, 0] - logits[:, 2]).abs().max() > 1e-3, "a different route gives a different representation"
    # the mixture read-out, by contrast, gives every task the same representation
    mixture = model_with(tasks=3, readout="mixture")
    mixture.load_state_dict(model.state_dict())
    with torch.no_grad():
        mixed = mixture(tiny_batch())
    assert torch.allclose(mixed[:, 0], mixed[:, 2])


def test_gradients_reach_every_tasks_gate_and_embedding():
    model = model_with(tasks=5, layers=(1,))
    model.train()
    logits, routes = model.forward_with_routes(tiny_batch())
    y = torch.randint(0, 2, logits.shape).float()
    (model.task_loss(logits, y) + model.router.regularizer(routes)).backward()
    part = model.router.parts[0]
    assert (part.task_embed.grad.abs().sum(dim=1) > 0).all(), "every task's embedding gets gradient"
    assert (part.keys["1"].grad.abs().sum(dim=1) > 0).all(), "every expert's key gets gradient"
    assert model.adapters["1"].U.grad.abs().sum() > 0 and model.adapters["1"].V.grad.abs().sum() > 0


def test_one_forward_pass_serves_all_tasks():
    """617 tasks (ToxCast's count): each backbone layer runs once per batch, whatever T is."""
    for layers, num_layers in (((0, 1, 2), 3), ((0,), 3)):
        model = model_with(tasks=617, layers=layers, num_layers=num_layers, k=8)
        calls = [0] * num_layers
        for i, conv in enumerate(model.backbone.convs):
            conv.register_forward_hook(lambda *_, i=i: calls.__setitem__(i, calls[i] + 1))
        with torch.no_grad():
            logits = model(tiny_batch())
        assert logits.shape == (len(SMILES), 617)
        assert calls == [1] * num_layers, calls


def test_regulariser_acts_on_the_expert_gates_only():
    linked = np.ones((3, 3), dtype=np.float32)
    model = model_with(tasks=3, relation=linked)
    router = model.router
    same, different = torch.full((3, 3), 1 / 3), torch.eye(3)
    assert float(router.regularizer({0: different, 1: same})) < 1e-6, "lower layers feed a shared mixture"
    assert float(router.regularizer({0: same, 1: different})) > 0.0
    mixture = model_with(tasks=3, relation=linked, readout="mixture")
    assert float(mixture.router.regularizer({0: different, 1: same})) > 0.0, "the mixture read-out regularises every layer"


def test_temperature_and_threshold_act_on_the_per_task_gates():
    cold = model_with(temperature=1e-4).router.routes()[1]
    assert torch.allclose(cold.max(dim=1).values, torch.ones(4), atol=1e-4)
    torch.manual_seed(0)
    gated = model_with(threshold=0.34).router.routes()[1]
    assert ((gated > 0).sum(dim=1) <= 2).all() and torch.allclose(gated.sum(dim=1), torch.ones(4))


def test_restart_keeps_part_of_each_tasks_own_embedding():
    linked = np.ones((3, 3), dtype=np.float32)
    plain = model_with(tasks=3, relation=linked, prior_steps=4).router.parts[0]
    restart = model_with(tasks=3, relation=linked, prior_steps=4, prior_restart=0.3).router.parts[0]
    full = model_with(tasks=3, relation=linked, prior_steps=4, prior_restart=1.0).router.parts[0]
    e0 = restart.task_embed
    a_hat = restart.normalized(restart.relation)
    want = e0
    for _ in range(4):
        want = 0.7 * a_hat @ want + 0.3 * e0
    assert torch.allclose(restart.propagated_embeddings(), want)
    assert torch.allclose(plain.propagated_embeddings(), torch.linalg.matrix_power(a_hat, 4) @ plain.task_embed, atol=1e-6)
    assert torch.equal(full.propagated_embeddings(), full.task_embed)
    # on a fully linked graph plain propagation makes every task the same; the restart does not
    spread = lambda e: float((e - e.mean(dim=0)).norm().detach())  # noqa: E731
    assert spread(plain.propagated_embeddings()) < 1e-5 < spread(restart.propagated_embeddings())


def test_headers_without_the_new_fields_mean_the_first_formulation():
    raw = model_with().spec.to_dict()
    assert raw["readout"] == "task" and raw["parts"][0]["prior_restart"] == 0.0
    del raw["readout"], raw["parts"][0]["prior_restart"]
    old = ModelSpec.from_dict(raw)
    assert old.readout == "mixture" and old.parts[0].prior_restart == 0.0


def test_mixture_readout_is_the_first_formulation():
    """`readout: mixture` computes logits = W pool(h) + c on the representation adapted with alpha(x)."""
    model = model_with(readout="mixture")
    data = tiny_batch()
    with torch.no_grad():
        rep, _ = run_layers(model, data)
        assert torch.equal(model(data), model.head(rep))


def test_a_version_1_bundle_loads_and_predicts_as_before(tmp_path):
    """A bundle written before the read-out existed (format version 1, no `readout`, no
    `prior_restart` in its header) loads as the mixture read-out and predicts what it did."""
    from safetensors.torch import load_file

    from cft.files.bundle import load_bundle, save_bundle
    from cft.files.stfile import read_header, write_safetensors

    model = model_with(readout="mixture", prior_steps=2)
    new = tmp_path / "new.safetensors"
    save_bundle(new, model, data={}, metrics={}, provenance={})
    header = read_header(new, "bundle")
    header["format_version"] = "1"
    del header["spec"]["readout"]
    for part in header["spec"]["parts"]:
        del part["prior_restart"], part["prior_norm"]
    old = tmp_path / "old.safetensors"
    write_safetensors(old, load_file(str(new)), header)
    loaded, info = load_bundle(old, backbone=model.backbone)
    assert info.spec.readout == "mixture" and info.spec.parts[0].prior_restart == 0.0 and info.spec.parts[0].prior_norm == "none"
    data = tiny_batch()
    with torch.no_grad():
        assert torch.equal(loaded(data), model(data))
    assert read_header(new, "bundle")["format_version"] == "3"
