"""cft.nn.routing: gate, temperature, prior propagation, regulariser, learned prior, per-molecule weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from model_kit import SMILES, tiny_batch, tiny_model
from test_readout import model_with

from cft.nn.graph import normalized_adjacency
from cft.nn.routing import PartRouter, gate
from cft.spec import PartSpec


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
    model = tiny_model(temperature=1e-4, threshold=0.0)
    routes = model.router.routes()
    for r in routes.values():
        assert torch.allclose(r.max(dim=1).values, torch.ones(r.size(0)), atol=1e-4)
    hot = tiny_model(temperature=100.0, threshold=0.0).router.routes()
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


def _dense_prior_router(norm: str, tasks: int = 60, seed: int = 0) -> PartRouter:
    """A dense, connected prior (every pair linked at 0.3-0.9): the over-smoothing case."""
    rng = np.random.default_rng(seed)
    dense = rng.uniform(0.3, 0.9, (tasks, tasks)).astype(np.float32)
    dense = (dense + dense.T) / 2
    np.fill_diagonal(dense, 1.0)
    torch.manual_seed(seed)
    spec = PartSpec(name="p", tasks=[f"t{i}" for i in range(tasks)], layers=[0], num_adapters=8, rank=2, embed_dim=16, prior_steps=2, prior_norm=norm)
    return PartRouter(spec, 8, dense)


def test_pairnorm_keeps_the_embeddings_scale_and_spread_over_a_dense_prior():
    """Plain propagation over a dense prior shrinks every embedding to a common vector and the
    routes turn uniform; PairNorm (centred, rescaled to rms(E_0)) keeps them apart."""
    plain, normed = _dense_prior_router("none"), _dense_prior_router("pairnorm")
    assert torch.equal(plain.task_embed, normed.task_embed)
    rms = lambda x: x.pow(2).sum(-1).mean().sqrt()  # noqa: E731
    e0, smoothed, kept = plain.task_embed, plain.propagated_embeddings(), normed.propagated_embeddings()
    assert float(smoothed.detach().std(0).mean()) < 0.2 * float(e0.detach().std(0).mean()), "the fixture does not over-smooth"
    torch.testing.assert_close(rms(kept), rms(e0))
    torch.testing.assert_close(kept.mean(0), torch.zeros_like(kept[0]), atol=1e-5, rtol=0)
    # same direction per task as the centred propagated embeddings: only the common part and the scale change
    centred = smoothed - smoothed.mean(0)
    torch.testing.assert_close(torch.nn.functional.normalize(kept, dim=1), torch.nn.functional.normalize(centred, dim=1), atol=1e-4, rtol=0)
    from cft.nn.routing import routing_entropy

    entropy = {name: float(routing_entropy(r.routes()[0]).detach()) for name, r in (("plain", plain), ("pairnorm", normed))}
    assert entropy["pairnorm"] < entropy["plain"] - 0.2, entropy
    # gradients reach the embeddings through the normalisation
    normed.routes()[0].sum().backward()
    assert normed.task_embed.grad is not None and normed.task_embed.grad.abs().sum() > 0


def test_regulariser_is_zero_for_identical_routes_and_positive_otherwise():
    linked = np.ones((3, 3), dtype=np.float32)
    model = tiny_model(relation=linked, threshold=0.0)
    router = model.router
    same = {0: torch.full((3, 4), 0.25, requires_grad=True)}
    assert float(router.regularizer(same).detach()) == 0.0
    different = {0: torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0], [0.25] * 4], requires_grad=True)}
    value = router.regularizer(different)
    assert float(value.detach()) > 0
    value.backward()
    assert different[0].grad is not None and different[0].grad.abs().sum() > 0
    # with the identity prior no pair is linked: nothing to pull together
    assert float(tiny_model(threshold=0.0).router.regularizer(different).detach()) == 0.0


def test_learned_prior_is_trained_and_anchored():
    linked = np.array([[1, 0.5, 0], [0.5, 1, 0], [0, 0, 1]], dtype=np.float32)
    model = tiny_model(relation=linked, learned_prior=True, prior_anchor=1.0)
    part = model.router.parts[0]
    assert torch.allclose(part.relation_matrix(), torch.tensor(linked), atol=2e-3)
    model.train()
    logits, routes = model.forward_with_routes(tiny_batch())
    (model.task_loss(logits, torch.ones_like(logits)) + model.router.regularizer(routes)).backward()
    assert part.relation_logit.grad is not None and part.relation_logit.grad.abs().sum() > 0


def test_one_forward_pass_serves_all_tasks_with_per_molecule_weights():
    model = tiny_model(tasks=5, threshold=0.0)
    batch = tiny_batch()
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


@pytest.mark.parametrize("readout", ["mixture", "task"])
def test_normalised_route_entropy_is_one_for_uniform_and_zero_for_one_adapter_per_task(readout):
    router = model_with(readout=readout, tasks=3, layers=(0, 1), k=4).router
    uniform = {layer: torch.full((3, 4), 0.25) for layer in (0, 1)}
    one_hot = {layer: torch.eye(4)[[0, 2, 3]] for layer in (0, 1)}
    assert abs(float(router.normalised_entropy(uniform)) - 1.0) < 1e-6
    assert float(router.normalised_entropy(one_hot)) < 1e-6
    # the layers that decide a task's path: the expert layer (1) under the task read-out, every layer under the mixture
    mixed = {0: uniform[0], 1: one_hot[1]}
    assert abs(float(router.normalised_entropy(mixed)) - (0.0 if readout == "task" else 0.5)) < 1e-6


@pytest.mark.parametrize("readout", ["mixture", "task"])
def test_route_balance_is_one_when_tasks_spread_over_the_adapters_and_zero_when_all_share_one(readout):
    router = model_with(readout=readout, tasks=4, layers=(0, 1), k=4).router
    spread = {layer: torch.eye(4) for layer in (0, 1)}  # each task its own adapter
    same = {layer: torch.eye(4)[[2, 2, 2, 2]] for layer in (0, 1)}  # sharp, but every task on adapter 2
    uniform = {layer: torch.full((4, 4), 0.25) for layer in (0, 1)}
    assert abs(float(router.normalised_balance(spread)) - 1.0) < 1e-6
    assert abs(float(router.normalised_balance(uniform)) - 1.0) < 1e-6  # even use, though no task chooses
    assert float(router.normalised_balance(same)) < 1e-6
    # sharpness alone cannot tell the two sharp cases apart; entropy minus balance (minus the mutual information) can
    assert float(router.normalised_entropy(spread)) < 1e-6 and float(router.normalised_entropy(same)) < 1e-6
    mixed = {0: same[0], 1: spread[1]}
    assert abs(float(router.normalised_balance(mixed)) - (1.0 if readout == "task" else 0.5)) < 1e-6


def test_entropy_plus_balance_terms_send_tasks_to_different_adapters():
    """Minimising beta H(R_t) + gamma (1 - H(mean R)) from near-uniform routes: each task ends
    sharp and the tasks end on more than one adapter (entropy alone may put them all on one)."""
    model = tiny_model(layers=(0, 1), k=4, temperature=1.0, threshold=0.0)
    router = model.router
    optimiser = torch.optim.SGD(router.parameters(), lr=0.5)
    for _ in range(200):
        optimiser.zero_grad()
        routes = router.routes()
        (router.normalised_entropy(routes) + (1.0 - router.normalised_balance(routes))).backward()
        optimiser.step()
    with torch.no_grad():
        routes = router.routes()
        entropy, balance = float(router.normalised_entropy(routes)), float(router.normalised_balance(routes))
        chosen = {int(a) for r in router.deciding_routes(routes).values() for a in r.argmax(dim=1)}
    assert entropy < 0.5 and balance > 0.5 and len(chosen) > 1, (entropy, balance, chosen)


def test_the_route_entropy_term_has_a_gradient_that_sharpens_the_routes():
    model = tiny_model(layers=(0, 1), k=4, temperature=1.0, threshold=0.0)
    router = model.router
    with torch.no_grad():
        before = float(router.normalised_entropy(router.routes()))
    optimiser = torch.optim.SGD(router.parameters(), lr=0.5)
    for _ in range(50):
        optimiser.zero_grad()
        router.normalised_entropy(router.routes()).backward()
        optimiser.step()
    with torch.no_grad():
        after = float(router.normalised_entropy(router.routes()))
    assert 0.0 <= after < before - 0.2, (before, after)
