"""`cft inspect-routing`: which adapters each task uses, per insertion layer.

The routes R^l (rows: tasks, columns: adapters) do not depend on the molecules, so they are read
from a bundle without its backbone. Under the task read-out (`routing.readout: task`) the routes of
the last insertion layer are each task's gates over the experts it reads (its prediction is
w_t . (z_0 + sum_k R_tk (z_k - z_0))), and the lower layers' routes feed the per-molecule mixture
alpha(x) = w(x)^T R that all tasks share; under the mixture read-out every layer is such a mixture. Tasks are grouped by the part (source bundle) that serves them
and adapters by the part that owns them; for a composed bundle the cross-part block is the
sharing that the composed prior induced. Many tasks (ToxCast's 617) are clustered by their routes
(hierarchical clustering, average linkage) into at most `max_rows` rows, and the output says so.
A run folder adds the routing statistics of every epoch (metrics.jsonl).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from rich.text import Text

from cft.errors import CftError
from cft.nn.routing import task_entropy as routing_task_entropy
from cft.views.heatmap import (
    Heat,
    Panel,
    cluster_rows,
    render_heat,
    save_png,
    summarise_columns,
)


@dataclass
class RoutingReport:
    target: Path
    bundle: Path
    tasks: list[str]
    parts: list[tuple[str, int, int]]  # part name, task range
    layers: list[int]
    routes: dict[int, np.ndarray]  # [T, K_l]
    adapter_groups: dict[int, list[tuple[str, int, int]]]  # per layer: part name, adapter range
    provenance: dict = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)  # metrics.jsonl lines of a run folder
    part_modes: list[str] = field(default_factory=list)
    readout: str = "mixture"
    expert_layer: int | None = None  # the layer whose routes are the per-task expert gates

    def role(self, layer: int) -> str:
        """What a layer's routes do: the per-task expert gates, or a mixture shared by all tasks."""
        return "expert gates, one row per task" if layer == self.expert_layer else "shared mixture"


def load_report(target: str | Path) -> RoutingReport:
    from cft.files.bundle import load_bundle_shell, resolve_bundle_path

    target = Path(target)
    bundle = resolve_bundle_path(target)
    model, info = load_bundle_shell(bundle)
    router = model.router
    routes = model.routing_matrices()
    if not routes:
        raise CftError(f"{bundle} has no adapters (a head-only or full fine-tuning bundle): there is no routing to inspect.")
    parts = [(p.name, router.task_offsets[g], router.task_offsets[g + 1]) for g, p in enumerate(router.part_specs)]
    groups = {}
    for layer in routes:
        groups[layer] = [
            (p.name, router.adapter_offsets[g][layer], router.adapter_offsets[g][layer] + p.num_adapters)
            for g, p in enumerate(router.part_specs)
            if layer in router.adapter_offsets[g]
        ]
    history = []
    if target.is_dir() and (target / "metrics.jsonl").exists():
        for line in (target / "metrics.jsonl").read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and isinstance(record.get("routing"), dict):
                history.append(record)
    return RoutingReport(
        target=target, bundle=bundle, tasks=list(info.spec.tasks), parts=parts, layers=sorted(routes), routes=routes,
        adapter_groups=groups, provenance=info.provenance, history=history, part_modes=[p.mode for p in info.spec.parts],
        readout=info.spec.readout, expert_layer=router.expert_layer,
    )


def task_entropy(routes: np.ndarray) -> np.ndarray:
    """Entropy (nats) of each task's route, [T, K] -> [T] (the model's own definition)."""
    return routing_task_entropy(torch.from_numpy(np.asarray(routes, dtype=np.float64))).numpy()


def active_count(routes: np.ndarray) -> np.ndarray:
    return (routes > 0).sum(axis=1)


def chosen_count(routes: np.ndarray) -> int:
    """How many adapters are some task's largest route, [T, K] -> int: 1 when every task reads
    mostly the same adapter, however sharp each route is."""
    return len(np.unique(np.asarray(routes).argmax(axis=1)))


def task_cross_share(report: RoutingReport, layer: int) -> np.ndarray:
    """[T]: each task's route mass on adapters of parts other than its own."""
    r = report.routes[layer]
    out = np.zeros(r.shape[0])
    for name, a, b in report.parts:
        own = [(c, d) for n, c, d in report.adapter_groups[layer] if n == name]
        inside = sum(r[a:b, c:d].sum(axis=1) for c, d in own) if own else np.zeros(b - a)
        out[a:b] = r[a:b].sum(axis=1) - inside
    return out


def cross_mass(report: RoutingReport, layer: int) -> np.ndarray:
    """[P, P]: mean over part p's tasks of its route mass on part q's adapters."""
    r = report.routes[layer]
    n = len(report.parts)
    out = np.zeros((n, n))
    names = [name for name, _, _ in report.parts]
    for p, (_, a, b) in enumerate(report.parts):
        for name, c, d in report.adapter_groups[layer]:
            out[p, names.index(name)] = r[a:b, c:d].sum(axis=1).mean() if b > a else 0.0
    return out


@dataclass
class RowPlan:
    """How tasks become display rows: one row per task, or per cluster of similar tasks."""

    order: np.ndarray  # task indices in display order
    members: list[list[int]]  # display row -> task indices
    labels: list[str]
    groups: list[tuple[str, int, int]]  # part name, display row range
    clustered: bool


def plan_rows(report: RoutingReport, layers: list[int], max_rows: int) -> RowPlan:
    t = len(report.tasks)
    if t <= max_rows:
        members = [[i] for i in range(t)]
        groups = [(name, a, b) for name, a, b in report.parts]
        return RowPlan(np.arange(t), members, list(report.tasks), groups, False)
    features = np.concatenate([report.routes[layer] for layer in layers], axis=1)
    members, labels, groups, order = [], [], [], []
    budget = _split_budget([b - a for _, a, b in report.parts], max_rows)
    for (name, a, b), k in zip(report.parts, budget):
        sub_order, cluster = cluster_rows(features[a:b], k)
        start = len(members)
        for c in range(int(cluster.max()) + 1 if b > a else 0):
            idx = [a + int(i) for i in sub_order if cluster[i] == c]
            members.append(idx)
            first = report.tasks[idx[0]]
            labels.append(first if len(idx) == 1 else f"{first} +{len(idx) - 1}")
        order.extend(a + int(i) for i in sub_order)
        groups.append((name, start, len(members)))
    return RowPlan(np.array(order, dtype=int), members, labels, groups, True)


def _split_budget(sizes: list[int], total: int) -> list[int]:
    """Rows per part, proportional to its tasks, at least 1 each, at most its size."""
    n = sum(sizes)
    out = [max(1, min(s, int(math.floor(total * s / max(n, 1))))) for s in sizes]
    while sum(out) < total and any(o < s for o, s in zip(out, sizes)):
        i = max((i for i in range(len(sizes)) if out[i] < sizes[i]), key=lambda i: sizes[i] - out[i])
        out[i] += 1
    return out


def terminal_lines(report: RoutingReport, layers: list[int], width: int, max_rows: int) -> list:
    plan = plan_rows(report, layers, max_rows)
    out: list = []
    kind = report.provenance.get("kind", "trained")
    mode = report.provenance.get("mode")
    head = f"{report.bundle}: {len(report.tasks)} tasks"
    if len(report.parts) > 1:
        head += f" in {len(report.parts)} parts ({', '.join(f'{n}: {b - a}' for n, a, b in report.parts)})"
    head += f", {kind}" + (f" ({mode})" if mode else "") + (", calibrated" if "calibration" in report.provenance else "")
    if report.provenance.get("compose_rule"):
        prov = report.provenance
        head += f"; composed routes: {prov['compose_rule']}, k={prov.get('compose_steps')}, g={prov.get('compose_threshold')}"
        head += f", mix={prov.get('compose_mix')}" if prov["compose_rule"] == "residual" else ""
        head += f"; prior: {prov.get('prior', {}).get('source', '?')}"
    head += f"; read-out: {report.readout}" + (f" (experts: layer {report.expert_layer})" if report.expert_layer is not None else "")
    out.append(Text(head, style="bold"))
    if report.expert_layer is not None:
        out.append(Text(f"task read-out: task t reads the experts of layer {report.expert_layer} with its own gates (that layer's row t); "
                        "the routes of lower layers mix into one per-molecule alpha(x) = w(x)^T R that all tasks share", style="dim"))
    out.append(Text("cells: route weight x 100, shaded on a square-root scale (· = 0); rows: tasks; columns: adapters grouped by source bundle; "
                    "H = routing entropy (nats); act = active adapters" + ("; x% = route mass on other bundles' adapters x 100" if len(report.parts) > 1 else ""), style="dim"))
    if plan.clustered:
        out.append(Text(
            f"{len(report.tasks)} tasks do not fit as rows: shown as {len(plan.members)} clusters of tasks with similar routes "
            f"(hierarchical clustering over all shown layers, within each part); a row is its cluster's mean route, labelled "
            f"'first task +n others'. --json lists every task's routes and cluster; --max-rows changes the count.",
            style="yellow",
        ))
    if any(m == "uniform" for m in report.part_modes):
        out.append(Text("a part with uniform routing (merge modes, routing.mode: uniform, or one adapter per layer) gives every adapter the same weight", style="dim"))
    for layer in layers:
        r = report.routes[layer]
        values = np.stack([r[m].mean(axis=0) for m in plan.members])
        ent = task_entropy(r)
        act = active_count(r)
        ent_rows = [f"{np.mean(ent[m]):.2f}" for m in plan.members]
        act_rows = [f"{np.mean(act[m]):.1f}" if len(m) > 1 else str(int(act[m[0]])) for m in plan.members]
        groups = report.adapter_groups[layer]
        col_labels = []
        for _, a, b in groups:
            col_labels += [str(i) for i in range(b - a)]
        extra = [("H", ent_rows), ("act", act_rows)]
        if len(report.parts) > 1:  # the share each task gives to other bundles' adapters, x 100
            share = task_cross_share(report, layer)
            extra.append(("x%", [f"{100 * np.mean(share[m]):.1f}" for m in plan.members]))
        heat = Heat(values, plan.labels, col_labels, plan.groups, groups, extra, 1.0, "sum")
        heat, note = summarise_columns(heat, width)
        out.append(Text(""))
        out.append(Text(f"layer {layer} ({report.role(layer)}): {r.shape[0]} tasks x {r.shape[1]} adapters, "
                        f"mean entropy {ent.mean():.2f} (ln K = {math.log(r.shape[1]):.2f}), active {100 * (r > 0).mean():.0f}%, "
                        f"largest route of some task: {chosen_count(r)} of {r.shape[1]} adapters", style="bold"))
        if note:
            out.append(Text(note, style="yellow"))
        out.extend(render_heat(heat))
        if len(report.parts) > 1:
            mass = cross_mass(report, layer)
            names = [n for n, _, _ in report.parts]
            out.append(Text("route mass by bundle (mean over a part's tasks):", style="dim"))
            for p, name in enumerate(names):
                cells = " · ".join(f"{q} {mass[p, j]:.3f}" for j, q in enumerate(names) if any(g[0] == q for g in report.adapter_groups[layer]))
                out.append(Text(f"  {name} tasks -> {cells}"))
    return out


def _panel_title(report: RoutingReport, layer: int) -> str:
    r = report.routes[layer]
    entropy = float(task_entropy(r).mean())
    kind = "expert gates" if layer == report.expert_layer else "shared mixture"
    return f"layer {layer}: {kind}\nmean entropy {entropy:.2f} (ln K = {math.log(r.shape[1]):.2f}); {chosen_count(r)} of {r.shape[1]} chosen"


def write_png(report: RoutingReport, path: str | Path, layers: list[int], max_label_rows: int = 60) -> None:
    t = len(report.tasks)
    plan = plan_rows(report, layers, max_label_rows)
    panels = []
    for layer in layers:
        r = report.routes[layer]
        groups = report.adapter_groups[layer]
        col_labels = [f"{i}" for _, a, b in groups for i in range(b - a)]
        if plan.clustered:  # every task kept, ordered by cluster; ticks at the cluster centres
            ordered = r[plan.order]
            ticks, row_groups, pos = [], [], 0
            for (name, a, b) in plan.groups:
                start = pos
                for m, label in zip(plan.members[a:b], plan.labels[a:b]):
                    ticks.append((pos + (len(m) - 1) / 2, label))
                    pos += len(m)
                row_groups.append((name, start, pos))
            panels.append(Panel(ordered, _panel_title(report, layer), None, col_labels, row_groups, groups, ticks, 1.0, "route weight"))
        else:
            panels.append(Panel(r, _panel_title(report, layer), list(report.tasks), col_labels, list(report.parts), groups, None, 1.0, "route weight"))
        if len(report.parts) > 1:  # the cross-bundle mass in the panel title
            mass = cross_mass(report, layer)
            names = [n for n, _, _ in report.parts]
            crossing = ", ".join(f"{a}->{b} {mass[i, j]:.3f}" for i, a in enumerate(names) for j, b in enumerate(names) if i != j)
            panels[-1].title += f"\nroute mass to other bundles: {crossing}"
    note = ""
    if plan.clustered:
        note = f"{t} tasks, rows ordered by hierarchical clustering of their routes into {len(plan.members)} clusters; a tick labels a cluster's centre where it fits"
    history = None
    if report.history:
        epochs = [h.get("epoch", i + 1) for i, h in enumerate(report.history)]
        entropy = {f"layer {layer}": [h["routing"].get(str(layer), {}).get("entropy", float("nan")) for h in report.history] for layer in layers}
        active = {f"layer {layer}": [h["routing"].get(str(layer), {}).get("active_fraction", float("nan")) for h in report.history] for layer in layers}
        history = {"epochs": epochs, "series": {"mean routing entropy (nats)": entropy, "active fraction of routes": active}}
    bars = None
    if len(report.parts) > 1:
        share = np.mean([task_cross_share(report, layer) for layer in layers], axis=0)
        order = plan.order if plan.clustered else np.arange(t)
        bars = {
            "title": "route mass each task gives to other bundles' adapters (mean over the layers shown)",
            "labels": None if plan.clustered else [report.tasks[i] for i in order],
            "values": share[order].tolist(),
            "groups": list(panels[0].row_groups),
        }
    title = f"routing of {report.bundle} ({t} tasks; rows tasks, columns adapters grouped by source bundle; square-root colour scale)"
    save_png(path, panels, title=title, history=history, note=note, bars=bars)


def to_json(report: RoutingReport, layers: list[int], max_rows: int) -> dict:
    plan = plan_rows(report, layers, max_rows)
    out = {
        "bundle": str(report.bundle),
        "tasks": list(report.tasks),
        "parts": [{"name": n, "tasks": report.tasks[a:b]} for n, a, b in report.parts],
        "provenance": {k: v for k, v in report.provenance.items() if k in ("kind", "mode", "compose_rule", "compose_steps", "compose_threshold", "compose_mix", "prior")},
        "readout": report.readout,
        "expert_layer": report.expert_layer,
        "layers": {},
    }
    if plan.clustered:
        out["clusters"] = [[report.tasks[i] for i in m] for m in plan.members]
    for layer in layers:
        r = report.routes[layer]
        entry = {
            "role": "expert gates" if layer == report.expert_layer else "mixture",
            "adapters": [{"part": name, "index": i} for name, a, b in report.adapter_groups[layer] for i in range(b - a)],
            "routes": r.round(6).tolist(),
            "entropy": task_entropy(r).round(6).tolist(),
            "active": active_count(r).tolist(),
            "chosen": chosen_count(r),
        }
        if len(report.parts) > 1:
            entry["route_mass_by_part"] = cross_mass(report, layer).round(6).tolist()
            entry["cross_share"] = task_cross_share(report, layer).round(6).tolist()
        out["layers"][str(layer)] = entry
    if report.history:
        out["history"] = [{"epoch": h.get("epoch"), "routing": h["routing"]} for h in report.history]
    return out


def pick_layers(report: RoutingReport, layer: Optional[int]) -> list[int]:
    if layer is None:
        return report.layers
    if layer not in report.routes:
        raise CftError(f"--layer {layer}: {report.bundle} has adapters in layers {', '.join(map(str, report.layers))} only.")
    return [layer]
