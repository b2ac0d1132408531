"""The arithmetic of composition, in process: composed routing rules and merge modes."""

from __future__ import annotations

import math

import numpy as np
import torch

from cft.nn.graph import normalized_adjacency
from cft.nn.routing import Router, gate, row_normalize
from cft.spec import PartSpec


def _router(rule: str, mix: float = 1.0, steps: int = 1, threshold: float = 0.0, relation=None) -> Router:
    torch.manual_seed(0)
    a = PartSpec(name="A", tasks=["a0", "a1", "a2"], layers=[0], num_adapters=3, rank=2, embed_dim=4, threshold=0.0)
    b = PartSpec(name="B", tasks=["b0", "b1"], layers=[0], num_adapters=2, rank=2, embed_dim=4, threshold=0.0)
    if relation is None:
        relation = np.eye(5, dtype=np.float32)
        relation[0, 3] = relation[3, 0] = 0.6  # a0 - b0
        relation[0, 1] = relation[1, 0] = 0.4  # a0 - a1 (inside A)
    return Router([a, b], 8, [np.eye(3, dtype=np.float32), np.eye(2, dtype=np.float32)], relation, steps, threshold, rule, mix)


def _block(router: Router) -> torch.Tensor:
    own = [p.routes()[0] for p in router.parts]
    return torch.block_diag(*own)


def test_residual_rule_keeps_each_parts_routes_and_adds_a_prior_share():
    router = _router("residual", mix=0.5)
    with torch.no_grad():
        r = router.routes()[0]
        b = _block(router)
        p = normalized_adjacency(router.relation)
    assert torch.allclose(r.sum(dim=1), torch.ones(5), atol=1e-6)
    share = 0.5 * p[0, 3] / p[0].sum()
    assert torch.allclose(r[0, :3], (1 - share) * b[0, :3], atol=1e-6), "own routes kept, scaled by 1 - share"
    assert torch.allclose(r[0, 3:].sum(), share, atol=1e-6), "the share goes to the linked part's adapters"
    assert torch.allclose(r[0, 3:] / share, b[3, 3:], atol=1e-5), "in the proportions its linked task uses them"
    for t in (1, 2, 4):  # no link to another part: exactly the part's own route, whatever the links inside
        assert torch.equal(r[t], b[t])
    assert torch.allclose(r[3, :3].sum(), 0.5 * p[3, 0] / p[3].sum(), atol=1e-6)


def test_residual_rule_without_mix_or_steps_is_block_diagonal():
    for router in (_router("residual", mix=0.0), _router("residual", steps=0)):
        with torch.no_grad():
            assert torch.equal(router.routes()[0], _block(router))


def test_residual_threshold_gates_only_cross_routes():
    router = _router("residual", mix=1.0, threshold=0.6)
    with torch.no_grad():
        r, b = router.routes()[0], _block(router)
    kept = (r[0, 3:] > 0).sum()
    assert kept == 1, "only the largest cross route survives a high threshold"
    assert torch.allclose(r[0, :3] / r[0, :3].sum(), b[0, :3] / b[0, :3].sum(), atol=1e-6), "own proportions untouched"


def test_propagate_rule_is_the_reference_formula():
    router = _router("propagate", steps=2, threshold=0.1)
    with torch.no_grad():
        b = _block(router)
        p = normalized_adjacency(router.relation)
        expected = gate(row_normalize(p @ p @ b), 0.1)
        assert torch.allclose(router.routes()[0], expected, atol=1e-6)


def test_routes_keep_gradients_for_calibration():
    router = _router("residual", mix=0.5, threshold=0.2)
    r = router.routes()[0]
    (r * torch.arange(5.0)[None, :]).sum().backward()
    assert router.parts[1].task_embed.grad is not None and router.parts[1].task_embed.grad.abs().sum() > 0, \
        "a part's embeddings get gradient through the routes other parts borrow"


def test_merge_arithmetic_matches_peft_semantics():
    """cat is exact for the averaged mixture under any activation; linear is PEFT's sqrt-weighted
    sum; svd reproduces the weighted delta when its rank allows."""
    from cft.compose.merge import merge_layer
    from cft.nn.adapters import ACTIVATIONS

    torch.manual_seed(0)
    d, r = 12, 3
    comps = [(c, torch.randn(r, d), torch.randn(d, r)) for c in (0.7, 0.2, 0.1)]
    h = torch.randn(20, d)
    for act in ("gelu", "relu", "tanh", "identity"):
        phi = ACTIVATIONS[act]
        u, v = merge_layer(comps, "cat")
        expected = sum(c * phi(h @ ui.t()) @ vi.t() for c, ui, vi in comps)
        assert torch.allclose(phi(h @ u.t()) @ v.t(), expected, atol=1e-5), act
    u, v = merge_layer(comps, "linear")
    assert torch.allclose(u, sum(math.sqrt(c) * ui for c, ui, _ in comps)) and torch.allclose(v, sum(math.sqrt(c) * vi for c, _, vi in comps))
    u, v = merge_layer(comps, "svd")
    delta = sum(c * vi @ ui for c, ui, vi in comps)
    best = torch.linalg.svd(delta)
    expected = (best.U[:, :r] * best.S[:r]) @ best.Vh[:r]
    assert torch.allclose(v @ u, expected, atol=1e-4), "the best rank-r approximation of the weighted delta"
    one = [(0.7, comps[0][1][:1], comps[0][2][:, :1])]
    u, v = merge_layer(one, "svd")
    assert torch.allclose(v @ u, 0.7 * one[0][2] @ one[0][1], atol=1e-5)
