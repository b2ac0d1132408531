"""docs/method.md, formula by formula, written out by hand from the model's parameters (plain torch
arithmetic; nothing from cft.nn.routing or cft.nn.graph but the parameters) and compared with what
the model computes:
the normalised prior, the propagation with restart, the task routes, the query and the
per-molecule weights, the mixture read-out, the regulariser and the residual composition rule."""

from __future__ import annotations

import math

import numpy as np
import torch
from model_kit import tiny_batch

from cft.nn.backbone import Backbone
from cft.nn.model import CftModel
from cft.nn.routing import Router
from cft.spec import BackboneSpec, ModelSpec, PartSpec

T, K, M, D = 4, 3, 8, 16
RELATION = np.array([[1, 0.8, 0.0, 0.3], [0.8, 1, 0.5, 0.0], [0.0, 0.5, 1, 0.0], [0.3, 0.0, 0.0, 1]], dtype=np.float32)


def a_hat(a: torch.Tensor) -> torch.Tensor:
    """method.md: A-hat = D^-1/2 (A + I) D^-1/2, A's own diagonal ignored."""
    a = a * (1 - torch.eye(a.size(0)))
    a = a + torch.eye(a.size(0))
    d = a.sum(1).rsqrt()
    return d[:, None] * a * d[None, :]


def by_hand_gate(p: torch.Tensor, g: float) -> torch.Tensor:
    """method.md: zero weights under g, always keep each row's largest, renormalise each row."""
    keep = (p >= g) | (p == p.max(-1, keepdim=True).values)
    kept = p * keep
    return kept / kept.sum(-1, keepdim=True)


def mixture_model(first_layer: int = 1) -> CftModel:
    torch.manual_seed(3)
    bb = BackboneSpec(num_layers=3, hidden=D, dropout=0.0, virtual_node=True)
    names = [f"t{i}" for i in range(T)]
    part = PartSpec(name="p", tasks=names, layers=list(range(first_layer, 3)), num_adapters=K, rank=3, embed_dim=M,
                    threshold=0.2, temperature=0.7, prior_steps=2, prior_restart=0.3)
    spec = ModelSpec(backbone=bb, tasks=names, kinds=["binary"] * T, parts=[part], readout="mixture", scale=0.6, activation="gelu")
    model = CftModel(Backbone(bb), spec, [RELATION])
    with torch.no_grad():
        for bank in model.adapters.values():
            bank.V.normal_(0, 0.5)
        for p in model.backbone.parameters():  # the virtual node's state must not be zero at l0
            p.add_(0.1 * torch.randn_like(p))
    return model.eval()


@torch.no_grad()
def by_hand_logits(model: CftModel, data, query_from_h_in: bool = False) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
    spec, part_spec = model.spec, model.spec.parts[0]
    part, bb = model.router.parts[0], model.backbone
    # propagation with restart: E <- (1 - a) A_hat E + a E_0, k times
    a, e0 = part_spec.prior_restart, part.task_embed
    ah = a_hat(torch.as_tensor(RELATION))
    e = e0
    for _ in range(part_spec.prior_steps):
        e = (1 - a) * ah @ e + a * e0
    # routes: R^l = gate_g(softmax(E~ K_l^T / (tau sqrt(m))))
    routes = {l: by_hand_gate(torch.softmax(e @ part.keys[str(l)].t() / (part_spec.temperature * math.sqrt(M)), -1), part_spec.threshold)
              for l in part_spec.layers}
    # the node state entering l0: the output of layer l0 - 1, before the virtual node is added
    l0 = min(part_spec.layers)
    h, vn = bb.encode(data.x, data.num_graphs)
    for i in range(l0):
        h, vn = bb.layer(i, h, vn, data.edge_index, data.edge_attr, data.batch)
    state = h + vn[data.batch] if query_from_h_in else h
    q = bb.pool(state, data.batch, data.num_graphs) @ part.query.weight.t() + part.query.bias  # q = W_q pool(h^l0) + b_q
    w = torch.softmax(q @ e.t() / math.sqrt(M), -1)  # w(x) = softmax(E~ q(x) / sqrt(m)), [B, T]
    for i in range(l0, bb.num_layers):
        h, vn = bb.layer(i, h, vn, data.edge_index, data.edge_attr, data.batch)
        alpha = (w @ routes[i])[data.batch]  # alpha^l(x) = w(x)^T R^l, per node of molecule x
        bank = model.adapters[str(i)]
        update = sum(alpha[:, k:k + 1] * (torch.nn.functional.gelu(h @ bank.U[k].t()) @ bank.V[k].t()) for k in range(K))
        h = h + spec.scale * update  # h <- h + s sum_i alpha_i V_i phi(U_i h)
    return bb.pool(h, data.batch, data.num_graphs) @ model.head.weight.t() + model.head.bias, routes  # W pool(h) + c


def test_mixture_forward_is_method_md_written_out():
    model, data = mixture_model(), tiny_batch()
    logits, routes = model(data, with_routes=True)
    expected, expected_routes = by_hand_logits(model, data)
    for layer, r in expected_routes.items():
        assert torch.allclose(routes[layer], r, atol=1e-6), layer
        assert (r == 0).any(), "the threshold gates something off (the gate is exercised)"
    assert torch.allclose(logits, expected, atol=1e-5), (logits - expected).abs().max()
    # the query reads h, not h + vn[batch]: the other reading gives other logits on this model
    other, _ = by_hand_logits(model, data, query_from_h_in=True)
    assert not torch.allclose(other, expected, atol=1e-3), "the test could not tell the two query states apart"


def test_regulariser_is_method_md_written_out():
    model = mixture_model()
    routes = model.router.routes()
    ah = a_hat(torch.as_tensor(RELATION))
    per_layer = [sum(ah[t, u] * (r[t] - r[u]).pow(2).sum() for t in range(T) for u in range(T)) / T for r in routes.values()]
    expected = sum(per_layer) / len(per_layer)  # mean over layers of (1/T) sum_tu A_hat_tu ||R_t - R_u||^2
    assert torch.allclose(model.router.regularizer(routes), expected, atol=1e-6)


def test_residual_composition_rule_is_method_md_written_out():
    """R_t = (1 - s_t) B_t + s_t gate(rownorm(P^x B))_t, s_t = mix sum_{u not in part(t)} P_tu / sum_u P_tu,
    P = A_hat^k over the composed prior, P^x = P without same-part entries."""
    torch.manual_seed(1)
    parts = [PartSpec(name=n, tasks=[f"{n}{i}" for i in range(2)], layers=[0], num_adapters=2, rank=2, embed_dim=4, threshold=0.0)
             for n in ("a", "b")]
    union = RELATION  # tasks a0 a1 | b0 b1: cross-part links a0-b1 (0.3) and a1-b0 (0.5)
    mix, g, steps = 0.4, 0.1, 2
    router = Router(parts, 8, [RELATION[:2, :2], RELATION[2:, 2:]], union_relation=union, compose_steps=steps,
                    compose_threshold=g, compose_rule="residual", compose_mix=mix)
    with torch.no_grad():
        got = router.routes()[0]
        own = [p.routes()[0] for p in router.parts]
    b = torch.zeros(4, 4)
    b[:2, :2], b[2:, 2:] = own[0], own[1]
    p = torch.linalg.matrix_power(a_hat(torch.as_tensor(union)), steps)
    same = torch.zeros(4, 4, dtype=torch.bool)
    same[:2, :2] = same[2:, 2:] = True
    p_cross = p.masked_fill(same, 0.0)
    share = mix * p_cross.sum(1) / p.sum(1)
    cross = p_cross @ b
    cross = by_hand_gate(cross / cross.sum(1, keepdim=True), g)
    expected = (1 - share)[:, None] * b + share[:, None] * cross
    assert (share > 0).all() and (share < mix).all()
    assert torch.allclose(got, expected, atol=1e-6), (got - expected).abs().max()
