"""The mathematics of the engine: adapters, gate, prior propagation, regulariser, freezing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch_geometric.data import Batch
from torch_geometric.utils import from_smiles  # noqa: F401  (PyG available)

from cft.nn.adapters import AdapterBank
from cft.nn.backbone import Backbone
from cft.nn.graph import normalized_adjacency
from cft.nn.model import CftModel
from cft.nn.routing import PartRouter, gate
from cft.prior.relation import relation_from_labels
from cft.spec import BackboneSpec, ModelSpec, PartSpec

SMILES = ["CCO", "c1ccccc1O", "CC(=O)Nc1ccc(O)cc1", "ClCCCl", "CCN(CC)CC", "O=C(O)c1ccccc1"]


def _batch():
    from ogb.utils import smiles2graph
    from torch_geometric.data import Data

    graphs = []
    for s in SMILES:
        g = smiles2graph(s)
        graphs.append(Data(x=torch.from_numpy(g["node_feat"]).long(), edge_index=torch.from_numpy(g["edge_index"]).long(),
                           edge_attr=torch.from_numpy(g["edge_feat"]).long(), y=torch.zeros(1, 3)))
    return Batch.from_data_list(graphs)


def _model(arch="gin", tasks=3, layers=(0, 1), k=4, rank=3, freeze=True, relation=None, **part_kw):
    torch.manual_seed(0)
    spec_bb = BackboneSpec(arch=arch, num_layers=2, hidden=16, dropout=0.0)
    names = [f"t{i}" for i in range(tasks)]
    part = PartSpec(name="p", tasks=names, layers=list(layers), num_adapters=k, rank=rank, embed_dim=8, **part_kw)
    spec = ModelSpec(backbone=spec_bb, tasks=names, kinds=["binary"] * tasks, parts=[part])
    rel = relation if relation is not None else np.eye(tasks, dtype=np.float32)
    return CftModel(Backbone(spec_bb), spec, [rel], freeze_backbone=freeze)


@pytest.mark.parametrize("arch", ["gin", "gcn"])
def test_zero_initialised_adapters_leave_the_backbone_unchanged_to_the_bit(arch):
    model = _model(arch=arch)
    batch = _batch()
    model.eval()
    with torch.no_grad():
        adapted = model(batch)
        plain = model.head(model.backbone(batch))
    assert torch.equal(adapted, plain)


def test_batched_bank_equals_per_adapter_reference():
    torch.manual_seed(1)
    for activation in ("identity", "relu", "gelu", "tanh"):
        bank = AdapterBank(5, 3, 16, activation)
        torch.nn.init.normal_(bank.V)
        h, alpha = torch.randn(40, 16), torch.softmax(torch.randn(40, 5), dim=-1)
        assert torch.allclose(bank(h, alpha), bank.reference_forward(h, alpha), atol=1e-5)


def test_gate_zeroes_under_threshold_and_renormalises():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05], [0.7, 0.1, 0.1, 0.1]], requires_grad=True)
    routed = gate(probs, threshold=0.12)
    expected = torch.tensor([[0.5, 0.3, 0.15, 0.0], [1.0, 0.0, 0.0, 0.0]])
    expected[0] /= expected[0].sum()
    assert torch.allclose(routed, expected)
    assert torch.allclose(routed.sum(dim=1), torch.ones(2))
    # straight-through: gradients reach the gated-off entries too
    (routed * torch.arange(1.0, 5.0)).sum().backward()
    assert probs.grad is not None and (probs.grad != 0).all()
    # top-k keeps the k largest; no row ever goes empty
    assert (gate(probs.detach(), 0.0, top_k=2) > 0).sum(dim=1).tolist() == [2, 2]
    assert (gate(probs.detach(), 0.99) > 0).sum(dim=1).tolist() == [1, 1]


def test_low_temperature_approaches_argmax():
    model = _model(temperature=1e-4, threshold=0.0)
    routes = model.router.routes()
    for r in routes.values():
        assert torch.allclose(r.max(dim=1).values, torch.ones(r.size(0)), atol=1e-4)
    hot = _model(temperature=100.0, threshold=0.0).router.routes()
    assert all(r.max(dim=1).values.max() < 0.3 for r in hot.values())


def test_identity_prior_propagates_nothing_and_a_real_prior_does():
    eye = np.eye(3, dtype=np.float32)
    identity = PartRouter(PartSpec(name="p", tasks=["a", "b", "c"], layers=[0], num_adapters=2, rank=2, embed_dim=4, prior_steps=3), 8, eye)
    assert torch.equal(normalized_adjacency(torch.tensor(eye)), torch.eye(3))
    assert torch.allclose(identity.propagated_embeddings(), identity.task_embed)
    linked = np.array([[1, 1, 0], [1, 1, 0], [0, 0, 1]], dtype=np.float32)
    router = PartRouter(PartSpec(name="p", tasks=["a", "b", "c"], layers=[0], num_adapters=2, rank=2, embed_dim=4, prior_steps=1), 8, linked)
    emb = router.propagated_embeddings()
    e = router.task_embed
    assert torch.allclose(emb[0], emb[1]) and torch.allclose(emb[0], (e[0] + e[1]) / 2)
    assert torch.allclose(emb[2], e[2]), "an unlinked task is untouched"


def test_normalisation_matches_the_formula():
    a = torch.tensor([[0, 2.0, 0.5], [2.0, 0, 0], [0.5, 0, 0]])
    d = (a + torch.eye(3)).sum(dim=1)
    expected = (a + torch.eye(3)) / torch.sqrt(d[:, None] * d[None, :])
    assert torch.allclose(normalized_adjacency(a), expected)


def test_regulariser_is_zero_for_identical_routes_and_positive_otherwise():
    linked = np.ones((3, 3), dtype=np.float32)
    model = _model(relation=linked, threshold=0.0)
    router = model.router
    same = {0: torch.full((3, 4), 0.25, requires_grad=True)}
    assert float(router.regularizer(same).detach()) == 0.0
    different = {0: torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0], [0.25] * 4], requires_grad=True)}
    value = router.regularizer(different)
    assert float(value.detach()) > 0
    value.backward()
    assert different[0].grad is not None and different[0].grad.abs().sum() > 0
    # with the identity prior no pair is linked: nothing to pull together
    assert float(_model(threshold=0.0).router.regularizer(different).detach()) == 0.0


def test_frozen_backbone_receives_no_gradient_and_adapters_do():
    model = _model()
    model.train()
    batch = _batch()
    logits, routes = model.forward_with_routes(batch)
    loss = model.task_loss(logits, torch.randint(0, 2, logits.shape).float()) + model.router.regularizer(routes)
    loss.backward()
    assert all(p.grad is None for p in model.backbone.parameters())
    assert model.adapters["0"].V.grad is not None and model.adapters["0"].V.grad.abs().sum() > 0
    assert model.router.parts[0].task_embed.grad is not None
    assert model.router.parts[0].query.weight.grad is not None
    assert not model.backbone.training, "a frozen backbone stays in eval mode"


def test_unfrozen_backbone_is_trained():
    model = _model(freeze=False)
    model.train()
    logits, _ = model.forward_with_routes(_batch())
    model.task_loss(logits, torch.ones_like(logits)).backward()
    assert all(p.grad is not None for p in model.backbone.parameters() if p.requires_grad)


def test_masked_losses_ignore_missing_labels():
    model = _model()
    logits = torch.tensor([[0.0, 2.0, -1.0]])
    y = torch.tensor([[1.0, float("nan"), 0.0]])
    expected = torch.nn.functional.binary_cross_entropy_with_logits(torch.tensor([0.0, -1.0]), torch.tensor([1.0, 0.0]))
    assert torch.allclose(model.task_loss(logits, y), expected)
    model.is_binary[:] = torch.tensor([True, True, False])
    y = torch.tensor([[1.0, float("nan"), 3.0]])
    bce = torch.nn.functional.binary_cross_entropy_with_logits(torch.tensor(0.0), torch.tensor(1.0))
    assert torch.allclose(model.task_loss(logits, y), (bce + 16.0) / 2)


def test_learned_prior_is_trained_and_anchored():
    linked = np.array([[1, 0.5, 0], [0.5, 1, 0], [0, 0, 1]], dtype=np.float32)
    model = _model(relation=linked, learned_prior=True, prior_anchor=1.0)
    part = model.router.parts[0]
    assert torch.allclose(part.relation_matrix(), torch.tensor(linked), atol=2e-3)
    model.train()
    logits, routes = model.forward_with_routes(_batch())
    (model.task_loss(logits, torch.ones_like(logits)) + model.router.regularizer(routes)).backward()
    assert part.relation_logit.grad is not None and part.relation_logit.grad.abs().sum() > 0


def test_one_forward_pass_serves_all_tasks_with_per_molecule_weights():
    model = _model(tasks=5, threshold=0.0)
    batch = _batch()
    model.eval()
    with torch.no_grad():
        h, vn = model.backbone.encode(batch.x, batch.num_graphs)
        state = model.backbone.pool(h, batch.batch, batch.num_graphs)
        emb = [p.propagated_embeddings() for p in model.router.parts]
        alphas = model.router.alphas([state], model.router.routes(emb), emb)
    a = alphas[0]
    assert a.shape == (1, len(SMILES), 4)
    assert torch.allclose(a.sum(dim=-1), torch.ones(1, len(SMILES)), atol=1e-5), "convex mix of task routes"
    assert not torch.allclose(a[0, 0], a[0, 1]), "weights differ between molecules"


def test_label_prior_statistics():
    y = np.array([[1, 1, 0], [0, 0, 1], [1, 1, np.nan], [0, 0, 0], [1, 1, 1], [0, 0, np.nan]], dtype=float)
    phi = relation_from_labels(y, "phi", min_support=2)
    assert phi[0, 1] == pytest.approx(1.0) and phi[0, 0] == 1.0
    assert np.allclose(phi, phi.T) and (phi >= 0).all()
    assert relation_from_labels(y, "phi", min_support=10)[0, 1] == 0.0, "below the minimum support"
    jac = relation_from_labels(y, "jaccard", min_support=2)
    assert jac[0, 1] == pytest.approx(1.0)
    top = relation_from_labels(np.random.default_rng(0).integers(0, 2, (200, 6)).astype(float), "cosine", min_support=2, top_k=1)
    assert ((top - np.eye(6)) > 0).sum(axis=1).max() <= 6 and np.allclose(top, top.T)


def test_molpcba_recipe_fits_the_papers_parameter_budget():
    from conftest import REPO

    from cft.recipe.load import load_recipe
    from cft.training.build import model_spec

    recipe = load_recipe(REPO / "recipes" / "molpcba.yaml")

    class FakeData:
        name, tasks, kinds = "pcba", [f"t{i}" for i in range(128)], ["binary"] * 128

    spec = model_spec(recipe, FakeData(), BackboneSpec.of(recipe.backbone))
    model = CftModel(Backbone(spec.backbone), spec, [np.eye(128, dtype=np.float32)])
    counts = model.parameter_counts()
    assert counts["total"] <= 4_800_000
    assert counts["trainable"] / counts["total"] < 0.15
