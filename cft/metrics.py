"""Metrics with `ogb.graphproppred.Evaluator` semantics: rocauc / ap / rmse, per task and mean.

The Evaluator itself scores each task (one column at a time, so per-task values come out
too); tasks without both classes among the labelled molecules are skipped, as OGB does, and
the mean is over the tasks that could be scored.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from ogb.graphproppred import Evaluator
from sklearn.metrics import mean_absolute_error

from cft.spec import HIGHER_IS_BETTER, METRIC_TASK_KIND, METRICS

# an OGB dataset whose official metric is each of ours, so the Evaluator scores it for us
_EVALUATOR_FOR = {"rocauc": "ogbg-molhiv", "ap": "ogbg-molpcba", "rmse": "ogbg-molesol"}
assert set(_EVALUATOR_FOR) == set(METRICS), "every metric of cft.spec.METRICS needs an OGB evaluator"


def _evaluator(metric: str) -> Evaluator:
    evaluator = Evaluator(_EVALUATOR_FOR[metric])
    evaluator.num_tasks = 1  # we score one column at a time
    return evaluator


def score(metric: str, y_true: np.ndarray, y_pred: np.ndarray, tasks: Sequence[str]) -> dict:
    """{"mean": float, "per_task": {task: float | None}} (None: task could not be scored)."""
    evaluator = _evaluator(metric)
    per_task: dict[str, float | None] = {}
    for j, task in enumerate(tasks):
        truth, pred = y_true[:, j : j + 1], y_pred[:, j : j + 1]
        labelled = ~np.isnan(truth[:, 0])
        if METRIC_TASK_KIND[metric] == "binary":
            observed = truth[labelled, 0]
            if not ((observed == 1).any() and (observed == 0).any()):
                per_task[task] = None
                continue
        elif not labelled.any():
            per_task[task] = None
            continue
        value = evaluator.eval({"y_true": truth, "y_pred": pred})[metric]
        per_task[task] = float(value)
    valid = [v for v in per_task.values() if v is not None and not math.isnan(v)]
    mean = float(np.mean(valid)) if valid else float("nan")
    result = {"mean": mean, "per_task": per_task, "scored_tasks": len(valid)}
    if METRIC_TASK_KIND[metric] == "regression":  # practitioners read MAE beside RMSE
        result["mae"] = _mae(y_true, y_pred, tasks)
    return result


def _mae(y_true: np.ndarray, y_pred: np.ndarray, tasks: Sequence[str]) -> dict:
    """{"mean", "per_task"}: mean absolute error per task over its labelled molecules (label units)."""
    per_task: dict[str, float | None] = {}
    for j, task in enumerate(tasks):
        labelled = ~np.isnan(y_true[:, j])
        per_task[task] = float(mean_absolute_error(y_true[labelled, j], y_pred[labelled, j])) if labelled.any() else None
    scored = [v for v in per_task.values() if v is not None]
    return {"mean": float(np.mean(scored)) if scored else float("nan"), "per_task": per_task}


def better(metric: str, new: float, old: float | None) -> bool:
    """Whether `new` beats `old` (None: nothing yet) for `metric` (a key of HIGHER_IS_BETTER, or
    "loss": lower is better); NaN never beats anything."""
    if old is None or math.isnan(old):
        return not math.isnan(new)
    if math.isnan(new):
        return False
    higher = False if metric == "loss" else HIGHER_IS_BETTER[metric]
    return new > old if higher else new < old
