"""A sweep's results: per-run rows, per-variant mean and standard deviation, CSV and Markdown.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from cft.files.atomic import atomic_write_text
from cft.spec import HIGHER_IS_BETTER
from cft.sweep.folder import RunResult, SweepFolder
from cft.sweep.plan import Plan, Variant, format_value


def summary_attrs(summary: dict) -> dict:
    """What the tables and plots need of a run's summary.json, kept in its trial (so that a machine
    that did not train a run can still tabulate it)."""
    params = summary.get("params", {})
    return {
        "metric": summary.get("metric"),
        "valid": {"mean": summary.get("valid", {}).get("mean")},
        "test": {"mean": summary.get("test", {}).get("mean")},
        "params": {k: params.get(k) for k in ("trainable", "total", "trainable_fraction")},
        "seconds": {"train": summary.get("seconds", {}).get("train")},
        "graphs_per_second": summary.get("graphs_per_second"),
        "best_epoch": summary.get("best_epoch"),
        "routing": {k: summary.get("routing", {}).get(k) for k in ("deciding_entropy", "deciding_balance")},
    }


def study_outcomes(plan: Plan, folder: SweepFolder, queue) -> dict[tuple[str, int], RunResult]:
    """Each run's state from its trials in the study: finished (a COMPLETE trial), running, pending
    (WAITING, or interrupted), failed (the last attempt failed). Runs without a trial are absent."""
    from optuna.trial import TrialState

    from cft.sweep.study import RUN_ATTR, is_duplicate

    by_name = {v.name: v for v in plan.variants}
    trials: dict[str, list] = {}
    for t in queue.trials() if queue is not None else []:
        key = t.user_attrs.get(RUN_ATTR)
        if key is not None and not is_duplicate(t):
            trials.setdefault(key, []).append(t)
    out: dict[tuple[str, int], RunResult] = {}
    for variant, seed in plan.runs():
        found = trials.get(f"{variant.name}/seed-{seed}")
        if not found:
            continue
        local = folder.run_dir(variant, seed)
        done = [t for t in found if t.state == TrialState.COMPLETE]
        if done:
            t = done[0]
            run_dir = Path(t.user_attrs.get("run_dir") or local)
            out[(variant.name, seed)] = RunResult(by_name[variant.name], seed, "finished", t.user_attrs.get("summary"), run_dir=run_dir)
        elif any(t.state == TrialState.RUNNING for t in found):
            out[(variant.name, seed)] = RunResult(variant, seed, "running", run_dir=local)
        elif any(t.state == TrialState.WAITING for t in found):
            out[(variant.name, seed)] = RunResult(variant, seed, "pending", run_dir=local)
        else:
            last = max(found, key=lambda t: t.number)
            if last.user_attrs.get("outcome") == "failed":
                out[(variant.name, seed)] = RunResult(variant, seed, "failed", error=str(last.user_attrs.get("error", "")), run_dir=local)
            else:
                out[(variant.name, seed)] = RunResult(variant, seed, "pending", run_dir=local)
    return out


def collect(plan: Plan, folder: SweepFolder, queue=None) -> list[RunResult]:
    """One result per run of the plan: from the study where it has a trial, else from its run folder."""
    outcomes = study_outcomes(plan, folder, queue) if queue is not None else {}
    results = []
    for v, s in plan.runs():
        result = outcomes.get((v.name, s))
        if result is None or result.status == "running":
            local = folder.status(v, s)
            result = local if result is None or local.status == "finished" else result
        results.append(result)
    return results


def mean_std(values: list[float]) -> tuple[float, float]:
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not values:
        return math.nan, math.nan
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, math.nan
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


@dataclass
class VariantStats:
    variant: Variant
    runs: list[RunResult]
    valid: tuple[float, float]
    test: tuple[float, float]
    seconds: float
    trainable: Optional[int]
    total: Optional[int]
    entropy: tuple[float, float]  # normalised route entropy of the deciding layers (0 hard .. 1 uniform)
    balance: tuple[float, float]  # normalised entropy of their mean route (0 one adapter for all .. 1 even use)

    @property
    def finished(self) -> int:
        return sum(r.status == "finished" for r in self.runs)

    @property
    def failed(self) -> list[RunResult]:
        return [r for r in self.runs if r.status == "failed"]


def variant_stats(plan: Plan, results: list[RunResult]) -> list[VariantStats]:
    by_name: dict[str, list[RunResult]] = {v.name: [] for v in plan.variants}
    for r in results:
        by_name[r.variant.name].append(r)
    stats = []
    for variant in plan.variants:
        runs = by_name[variant.name]
        done = [r.summary for r in runs if r.status == "finished" and r.summary]
        secs = [s.get("seconds", {}).get("train") for s in done]
        secs = [s for s in secs if s is not None]
        stats.append(VariantStats(
            variant=variant, runs=runs,
            valid=mean_std([s["valid"]["mean"] for s in done]),
            test=mean_std([s["test"]["mean"] for s in done]),
            seconds=sum(secs) / len(secs) if secs else math.nan,
            trainable=done[0]["params"]["trainable"] if done else None,
            total=done[0]["params"]["total"] if done else None,
            entropy=mean_std([route_entropy(s) for s in done]),
            balance=mean_std([route_balance(s) for s in done]),
        ))
    return stats


def route_entropy(summary: dict) -> Optional[float]:
    """A run's normalised route entropy on the layers that decide each task's path (summary.json's
    `routing.deciding_entropy`; None for unrouted runs and for runs made before it was recorded)."""
    return _routing_value(summary, "deciding_entropy")


def route_balance(summary: dict) -> Optional[float]:
    """A run's `routing.deciding_balance`: how evenly all tasks together use those layers' adapters."""
    return _routing_value(summary, "deciding_balance")


def _routing_value(summary: dict, key: str) -> Optional[float]:
    return (summary.get("routing") or {}).get(key)


def metric_of(results: list[RunResult]) -> Optional[str]:
    for r in results:
        if r.summary:
            return r.summary.get("metric")
    return None


def ranked(stats: list[VariantStats], metric: Optional[str]) -> list[VariantStats]:
    """Best valid metric first (the OGB protocol selects on valid); variants without a finished run last."""
    higher = HIGHER_IS_BETTER.get(metric, True)
    scored = [s for s in stats if not math.isnan(s.valid[0])]
    rest = [s for s in stats if math.isnan(s.valid[0])]
    scored.sort(key=lambda s: -s.valid[0] if higher else s.valid[0])
    return scored + rest


def _num(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "nan" if math.isnan(value) else repr(value)
    return str(value)


CSV_FIELDS = ("variant", "seed", "status", "metric", "valid", "test", "trainable_params", "total_params", "trainable_fraction",
              "seconds", "graphs_per_second", "best_epoch", "route_entropy", "route_balance", "error", "run_dir")


def write_csv(path: Path, plan: Plan, results: list[RunResult]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    fields = list(CSV_FIELDS)
    writer.writerow(fields[:1] + plan.keys + fields[1:])
    for r in results:
        s = r.summary or {}
        params = s.get("params", {})
        row = [r.variant.name, *(format_value(r.variant.knobs[k]) for k in plan.keys), r.seed, r.status, s.get("metric", ""),
               _num(s.get("valid", {}).get("mean")), _num(s.get("test", {}).get("mean")), _num(params.get("trainable")),
               _num(params.get("total")), _num(params.get("trainable_fraction")), _num(s.get("seconds", {}).get("train")),
               _num(s.get("graphs_per_second")), _num(s.get("best_epoch")), _num(route_entropy(s)), _num(route_balance(s)), r.error, str(r.run_dir or "")]
        writer.writerow(row)
    atomic_write_text(path, buffer.getvalue())


def format_mean_std(pair: tuple[float, float], digits: int = 4) -> str:
    """`0.7123 ± 0.0045` (sample std over seeds); the mean alone for one seed; `—` for none."""
    mean, std = pair
    if math.isnan(mean):
        return "—"
    return f"{mean:.{digits}f}" if math.isnan(std) else f"{mean:.{digits}f} ± {std:.{digits}f}"


def markdown(plan: Plan, results: list[RunResult], command: str) -> str:
    metric = metric_of(results)
    stats = ranked(variant_stats(plan, results), metric)
    n_seeds = len(plan.seeds)
    esc = lambda text: text.replace("|", "\\|")  # noqa: E731
    lines = [
        f"# Ablation of `{plan.recipe_path}`",
        "",
        f"- command: `{command}`",
        f"- mode: {plan.mode}" + (f" (preset {plan.preset})" if plan.preset else "") + f"; {len(plan.variants)} variants x {n_seeds} seed(s) {plan.seeds}",
        "- recipe values of the swept knobs: " + ", ".join(f"`{k}={format_value(v)}`" for k, v in plan.base_knobs.items())
        + " (values that differ from them are in bold)",
        f"- {metric or 'metric'}: mean ± std over seeds; sorted by the valid metric, best first (the test metric is not used to rank)",
        "- route entropy: mean task-route entropy / ln K on the layers that decide each task's path, at the best epoch "
        "(1 = uniform routes, 0 = one adapter per task; — where nothing is routed); balance: entropy of the tasks' mean route / ln K "
        "(1 = all adapters used alike, 0 = every task on the same adapter)",
        "",
        "| # | " + " | ".join(plan.keys) + f" | valid {metric or ''} | test {metric or ''} | route entropy | balance | trainable params | train seconds | runs |",
        "|---:|" + "---|" * len(plan.keys) + "---:|---:|---:|---:|---:|---:|---|",
    ]
    for i, s in enumerate(stats, 1):
        runs = f"{s.finished}/{len(s.runs)}" + (f", {len(s.failed)} failed" if s.failed else "")
        params = f"{s.trainable:,} ({100 * s.trainable / s.total:.1f}%)" if s.trainable is not None and s.total else "—"
        secs = "—" if math.isnan(s.seconds) else f"{s.seconds:.1f}"
        knobs = [esc(format_value(s.variant.knobs[k])) for k in plan.keys]
        knobs = [f"**{text}**" if k in s.variant.changes else text for k, text in zip(plan.keys, knobs)]
        lines.append(f"| {i} | " + " | ".join(knobs) + f" | {format_mean_std(s.valid)} | {format_mean_std(s.test)} | {format_mean_std(s.entropy, 2)} | {format_mean_std(s.balance, 2)} | {params} | {secs} | {runs} |")
    failures = [r for s in stats for r in s.failed]
    if failures:
        lines += ["", "## Failed runs", ""]
        for r in failures:
            error = r.error.replace("\n", " ")
            lines.append(f"- {r.variant.label}, seed {r.seed}: {error} (log: `{Path('variants') / r.variant.name / f'seed-{r.seed}.log'}`)")
    pending = sum(r.status not in ("finished", "failed") for r in results)
    if pending:
        lines += ["", f"{pending} run(s) have not finished yet; run the same command again to continue."]
    return "\n".join(lines) + "\n"
