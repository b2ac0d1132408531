"""Plots of a sweep: the metric against each knob, mean and spread over seeds.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from cft.files.atomic import atomic_write_with
from cft.files.paths import safe_join
from cft.sweep.folder import RunResult
from cft.sweep.plan import Plan, Variant, format_value, is_numeric
from cft.sweep.results import mean_std, metric_of


def _ordered_values(plan: Plan, key: str, present: list[Any]) -> list[Any]:
    """x-axis order: ascending for numbers, else the grid's order (the recipe's value first)."""
    grid = next(g for g in plan.grids if g.key == key)
    order: list[Any] = []
    for v in [plan.base_knobs[key], *grid.coerced, *present]:
        if v in present and v not in order:
            order.append(v)
    if is_numeric(order):
        order.sort()
    return order


def plot_knobs(plan: Plan, results: list[RunResult], folder: Path) -> list[Path]:
    """plots/<knob>.png: valid and test metric against the knob, mean ± std over seeds. A line joins
    the variants that agree on every other knob (one-at-a-time: the recipe's values); with more
    than six such lines the mean over the other knobs is drawn instead. Values without a finished
    run stay on the axis, marked `no result`."""
    metric = metric_of(results)
    if metric is None:
        return []
    from matplotlib.figure import Figure  # lazy: matplotlib costs ~0.5 s to import, only plots pay it

    per_run = {(r.variant.name, r.seed): r for r in results}
    written = []
    for key in plan.keys:
        others = [k for k in plan.keys if k != key]
        groups: dict[str, list[Variant]] = {}
        for variant in plan.variants:
            label = ", ".join(f"{k}={format_value(variant.knobs[k])}" for k in others)
            groups.setdefault(label, []).append(variant)
        lines = {label: vs for label, vs in groups.items() if len({json.dumps(v.knobs[key]) for v in vs}) >= 2}
        if not lines:  # a single value of this knob
            recipe_label = ", ".join(f"{k}={format_value(plan.base_knobs[k])}" for k in others)
            lines = {recipe_label: groups.get(recipe_label) or next(iter(groups.values()))}
        marginal = len(lines) > 6
        if marginal:
            lines = {"mean over the other knobs": list(plan.variants)}
        present = [v.knobs[key] for vs in lines.values() for v in vs]
        order = _ordered_values(plan, key, present)
        position = {json.dumps(v): i for i, v in enumerate(order)}
        with_result = set()
        fig = Figure(figsize=(10, 4), dpi=100)
        axes = fig.subplots(1, 2, sharey=True)
        for ax, split in zip(axes, ("valid", "test")):
            for label, variants in lines.items():
                points: dict[int, list[float]] = {}
                for v in variants:
                    for seed in plan.seeds:
                        r = per_run.get((v.name, seed))
                        if r and r.summary:
                            x = position[json.dumps(v.knobs[key])]
                            points.setdefault(x, []).append(r.summary[split]["mean"])
                            with_result.add(x)
                xs = sorted(points)
                pairs = [mean_std(points[x]) for x in xs]
                means = [m for m, _ in pairs]
                stds = [0.0 if math.isnan(sd) else sd for _, sd in pairs]
                ax.errorbar(xs, means, yerr=stds, marker="o", capsize=4, label=label)
            ax.set_title(f"{split} {metric}")
            ax.grid(alpha=0.3)
        for ax in axes:
            ax.set_xticks(range(len(order)))
            ax.set_xticklabels(
                [format_value(v) + (" *" if v == plan.base_knobs[key] else "") + ("" if i in with_result else "\n(no result)") for i, v in enumerate(order)],
                rotation=30 if len(order) > 6 else 0,
            )
            ax.set_xlim(-0.5, len(order) - 0.5)
            ax.set_xlabel(f"{key}   (* the recipe's value)")
        axes[0].set_ylabel(f"{metric}, mean ± std over {len(plan.seeds)} seed{'s' if len(plan.seeds) > 1 else ''}")
        if len(lines) > 1 or marginal:
            axes[1].legend(fontsize=7)
        fig.suptitle(f"cft ablate {plan.recipe_path.name}: {key}")
        fig.tight_layout()
        target = safe_join(folder / "plots", f"{key}.png", what="plot name")
        atomic_write_with(target, lambda tmp, fig=fig: fig.savefig(tmp, format="png"))
        written.append(target)
    return written
