"""Render benchmark results (benchmarks/results/*.json) as the markdown tables of BENCHMARKS.md.

    python benchmarks/report.py            # rewrite the generated blocks of BENCHMARKS.md in place

Each generated block sits between `<!-- begin:NAME -->` and `<!-- end:NAME -->`; the prose
around the blocks is written by hand and kept.
"""

from __future__ import annotations

import json
import math
import re
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
sys.path.insert(0, str(REPO / "benchmarks"))
from speed import RATIOS  # noqa: E402  (one list of ratio definitions for measuring and reporting)

from cft.spec import HIGHER_IS_BETTER  # noqa: E402


def _load(name: str) -> dict | None:
    path = RESULTS / name
    return json.loads(path.read_text()) if path.exists() else None


def machine_line(result: dict) -> str:
    m = result["machine"]
    return (f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']} ({m['torch_threads']} threads), Python {m['python']}; "
            f"commit {m['commit']}; {m['date']}. Command: `{result['command']}`.")


def paired_ratio(result: dict, name: str) -> str:
    """Repetition k of both modes ran back to back, so their ratio cancels much of the shared
    machine's drift (the reference machine's single measurements swing by +-20%)."""
    if name not in RATIOS or "all_train" not in result["modes"].get(RATIOS[name][0], {}):
        return ""
    num, den = (result["modes"][mode]["all_train"] for mode in RATIOS[name])
    ratios = sorted(a / b for a, b in zip(num, den))
    return f"{statistics.median(ratios):.2f}× ({ratios[0]:.2f}-{ratios[-1]:.2f})"


def speed_tables(result: dict) -> str:
    """The sections a run measured (speed.py --sections): throughput, featurisation, scaling, time to result."""
    lines = [machine_line(result), ""]
    if "modes" in result:
        lines += [f"Batch {result['batch_size']}, {result['steps']} training steps per measurement, "
                  + (f"median of {result['repetitions']} interleaved repetitions" if result["repetitions"] > 1 else "one repetition")
                  + ", each in its own process. Tox21 (6,258 training molecules), GIN-VN 300×5.", ""]
        lines += ["| mode | train graphs/s | per repetition | inference graphs/s | prefix cache s | peak RSS (MiB) | trainable / total params |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for mode, r in result["modes"].items():
            params = f"{int(r['trainable']):,} / {int(r['total']):,}" if "trainable" in r else "all"
            infer = r["infer_graphs_per_s"]
            infer = "—" if math.isnan(infer) else f"{infer:.0f}"  # NaN: not measured (--no-inference)
            reps = ", ".join(f"{v:.0f}" for v in r.get("all_train", []))
            lines.append(f"| {mode} | {r['train_graphs_per_s']:.0f} | {reps} | {infer} | {r.get('prefix_seconds', 0):.1f} | {r['peak_rss_mib']:.0f} | {params} |")
        lines += ["", "| ratio | of the medians | median of the per-repetition ratios (min-max) |", "|---|---:|---:|"]
        for name, value in result["ratios"].items():
            lines.append(f"| {name} | {value:.2f}× | {paired_ratio(result, name)} |")
    if "featurisation" in result:
        f = result["featurisation"]
        lines += ["", f"Featurisation of {f['molecules']:,} Tox21 SMILES: {f['cold_seconds']:.2f} s cold, {f['cached_seconds']:.3f} s from the cache.", ""]
    if "scaling_molecules" in result:
        lines += ["Time per training epoch against molecules (MUV, adapters K=4 r=8, 17 tasks):", "", "| molecules in file | training molecules | epoch seconds | seconds per 1k molecules | peak RSS (MiB) |", "|---:|---:|---:|---:|---:|"]
        for r in result["scaling_molecules"]:
            lines.append(f"| {r['limit']:,} | {r['train_molecules']:,} | {r['epoch_seconds']:.1f} | {1000 * r['epoch_seconds'] / max(r['train_molecules'], 1):.2f} | {r['peak_rss_mib']:.0f} |")
    if "scaling_tasks" in result:
        lines += ["", "Time per training epoch against tasks (ToxCast, same molecules):", "", "| tasks | training molecules | epoch seconds |", "|---:|---:|---:|"]
        for r in result["scaling_tasks"]:
            lines.append(f"| {r['tasks']} | {r['train_molecules']:,} | {r['epoch_seconds']:.1f} |")
    ttr = result.get("time_to_result")
    if ttr and "cft" in ttr:
        c = ttr["cft"]
        runs = ttr.get("chemprop_runs") or [{**ttr["chemprop"], "epochs": ttr["epochs"]}]  # files written before --ttr-chemprop-epochs: one run
        lines += ["", f"Time to a result on Tox21 ({ttr['split']}; no early stopping):", "",
                  "| tool | epochs | training wall clock (s) | test ROC-AUC | valid ROC-AUC (best epoch) |", "|---|---:|---:|---:|---:|",
                  f"| cft recipes/tox21.yaml{_precision_note(c.get('precision', 'fp32'))} | {c.get('epochs', ttr['epochs'])} | {c['wall_seconds']:.0f} | {c['test_rocauc']:.4f} | {_valid_cell(c)} |"]
        lines += [f"| chemprop {p.get('chemprop', '')} defaults | {p['epochs']} | {p['wall_seconds']:.0f} | {p['test_rocauc']:.4f} | |" for p in runs]
        ratios = "; ".join(f"{c['wall_seconds'] / p['wall_seconds']:.2f}× (chemprop at {p['epochs']} epochs)" for p in runs)
        lines += ["", f"cft / chemprop wall clock: {ratios}."]
        if "cft_backbone_pretraining" in ttr:  # result files from before the recipe named the shipped backbone
            lines[-1] += f" cft's one-off backbone pretraining (cached, shared by later runs): {ttr['cft_backbone_pretraining']['seconds']:.0f} s."
    return "\n".join(lines)


def _valid_cell(row: dict) -> str:
    """The cft run's validation score and best epoch (1-based), where the result file has them."""
    if "valid_rocauc" not in row:
        return ""
    return f"{row['valid_rocauc']:.4f} ({row['best_epoch']} of {row['epochs']})" if "best_epoch" in row else f"{row['valid_rocauc']:.4f}"


def _quality_time(result: dict) -> str:
    """Finished runs are reused by a later invocation, so its wall clock alone undersells the work."""
    text = f"last invocation {result['seconds'] / 60:.0f} minutes of wall clock"
    if "train_seconds_all_runs" in result:
        text += f"; training summed over all runs {result['train_seconds_all_runs'] / 60:.0f} minutes, {result['jobs']} runs at a time"
    return text


def quality_tables(result: dict) -> str:
    plural = lambda n, word: f"{n} {word}" + ("" if n == 1 else "s")  # noqa: E731
    proto = ", ".join(f"{k}: {plural(v['epochs'], 'epoch')} × {plural(v['seeds'], 'seed')}" for k, v in result["protocol"].items())
    lines = ([machine_line(result), ""] if "machine" in result else []) + [f"Protocol: {proto}; scaffold split 80/10/10; test score at the best validation epoch. Backbone: `{Path(result['backbone']).name}`. "
             f"Command: `{result['command']}` ({_quality_time(result)}).", ""]
    by_dataset: dict = {}
    for key, s in result["summary"].items():
        dataset, method = key.split("|")
        by_dataset.setdefault(dataset, []).append((method, s))
    for dataset, rows in by_dataset.items():
        metric = rows[0][1]["metric"]
        lines += [f"**{dataset}** (test {metric}, mean ± population std over seeds)", "", f"| method | test {metric} | valid {metric} | trainable params | train s/run | graphs/s |", "|---|---:|---:|---:|---:|---:|"]
        for method, s in rows:
            spread = f" ± {s['test_std']:.4f}" if s["seeds"] > 1 else " (1 seed)"
            lines.append(f"| {method} | {s['test_mean']:.4f}{spread} | {s['valid_mean']:.4f} | {s['trainable']:,} ({100 * s['trainable'] / s['total']:.1f}%) | {s['train_seconds']:.0f} | {s['graphs_per_second']:.0f} |")
        lines.append("")
    return "\n".join(lines)


def routing_tables(result: dict) -> str:
    """The routing study: per seed, mean ± sample std (n - 1) and the label-minus-identity gap per dataset."""
    lines = [machine_line(result), ""] + ([f"Code: cft/ and recipes/ as at commit {result['code_commit']}.", ""] if result.get("code_commit") else [])
    by_dataset: dict = {}
    for r in result["rows"]:
        if "error" not in r:
            by_dataset.setdefault(r["dataset"], {}).setdefault(r["method"], []).append(r)
    for dataset, methods in sorted(by_dataset.items(), key=lambda kv: kv[0] != "toxcast"):
        seeds = sorted({r["seed"] for rows in methods.values() for r in rows})
        metric = next(iter(methods.values()))[0]["metric"]
        lines += [f"**{dataset}** (test {metric} per seed; mean ± sample std over the seeds)", "",
                  "| method | " + " | ".join(f"seed {k}" for k in seeds) + " | mean ± std | valid mean | best epochs | train s/run |",
                  "|---|" + "---:|" * len(seeds) + "---:|---:|---|---:|"]
        means = {}
        for method, rows in methods.items():
            by_seed = {r["seed"]: r for r in rows}
            tests = [r["test"] for r in rows]
            means[method] = (statistics.mean(tests), statistics.stdev(tests) if len(tests) > 1 else None, len(tests))
            spread = f" ± {means[method][1]:.4f}" if means[method][1] is not None else " (1 seed)"
            cells = " | ".join(f"{by_seed[k]['test']:.4f}" if k in by_seed else "–" for k in seeds)
            lines.append(f"| {method} | {cells} | {means[method][0]:.4f}{spread} | {statistics.mean(r['valid'] for r in rows):.4f} | "
                         f"{', '.join(str(r['best_epoch']) for r in sorted(rows, key=lambda r: r['seed']))} | {statistics.mean(r['train_seconds'] for r in rows):.0f} |")
        label, identity = means.get("task read-out, label prior"), means.get("task read-out, identity prior")
        if label and identity:
            lines += ["", f"Task read-out, label prior minus identity prior: {label[0] - identity[0]:+.4f} "
                      f"({label[2]} and {identity[2]} seeds; the claim needs ≥ +0.01)."]
        lines.append("")
    return "\n".join(lines)


def levers_tables(result: dict) -> str:
    """The routing levers: per run valid and test, best epoch and the mean routing entropy at the
    best epoch against ln K (uniform routes), ordered by valid score (what a user would pick by)."""
    lines = [machine_line(result), "", f"Code: cft/ and recipes/ as at commit {result['code_commit']}."
             + (" **Partial: not every planned run has finished.**" if result.get("partial") else ""), ""]
    for dataset in sorted({r["dataset"] for r in result["rows"]}):
        rows = sorted((r for r in result["rows"] if r["dataset"] == dataset and "error" not in r), key=lambda r: -r["valid"])
        metric = rows[0]["metric"]
        lines += [f"**{dataset}**", "", f"| method | seed | valid {metric} | test {metric} | best epoch | epochs | mean routing entropy (nats) | train s |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for r in rows:
            entropy = f"{r['routing_entropy']:.3f}" if r.get("routing_entropy") is not None else "–"
            lines.append(f"| {r['method']} | {r['seed']} | {r['valid']:.4f} | {r['test']:.4f} | {r['best_epoch']} | {r['epochs']} | {entropy} | {r['train_seconds']:.0f} |")
        lines.append("")
    return "\n".join(lines)


def _other_code(result: dict) -> list[str]:
    """A line naming the runs that trained at other code than the header's (each run folder keeps
    the commit of the cft/ and recipes/ that trained it; files from before that have none)."""
    other: dict = {}
    for r in result["rows"]:
        if r.get("code_commit") and r["code_commit"] != result["code_commit"]:
            other.setdefault((r["code_commit"], r["method"]), []).append(r["seed"])
    if not other:
        return []
    parts = [f"{method} seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, sorted(seeds)))} at {commit}" for (commit, method), seeds in sorted(other.items())]
    return ["Runs trained at other code (cft/ and recipes/ as at the commit named): " + "; ".join(parts) + ".", ""]


def peers_tables(result: dict) -> str:
    """The peers benchmark: per method its seeds' test scores, mean ± sample std (n - 1), valid
    mean, best epochs, trainable parameters outside the task heads and seconds per run."""
    lines = [machine_line(result), "", f"Code: cft/ and recipes/ as at commit {result['code_commit']}. "
             f"Split: `{Path(result['split']['csv']).name}`"
             + (f" of `{Path(result['split']['csv']).parent.name}/`, cft's balanced scaffold split of seed {result['split']['split_seed']}"
                if result["split"].get("split_seed") is not None else "")
             + f" (SHA-256 `{result['split']['csv_sha256'][:12]}…`; train {result['split']['sizes']['train']:,}, "
             f"valid {result['split']['sizes']['val']:,}, test {result['split']['sizes']['test']:,}); up to {result['epochs']} epochs, patience {result['patience']}"
             f"{' (chemprop: none, its default)' if result['patience'] else ''}; backbone fingerprint `{result['backbone']['fingerprint'][:8]}…`."
             + (" **Partial: not every planned run has finished.**" if result.get("partial") else ""), ""]
    lines += _other_code(result)
    by_method: dict = {}
    for r in result["rows"]:
        by_method.setdefault(r["method"], []).append(r)
    seeds = sorted({r["seed"] for r in result["rows"]})
    metric = result["rows"][0]["metric"] if result["rows"] else "?"
    # routed runs of newer result files carry their routing entropy at the best epoch: the last layer's
    # (the experts' gates under the task read-out) is shown when any row has it
    entropy = any("routing_entropy" in r for r in result["rows"])
    # and how many of the last layer's adapters the tasks pick (sharp routes can all pick one)
    use = any("last_layer_use" in r for r in result["rows"])
    lines += ["| method | " + " | ".join(f"seed {k}" for k in seeds) + f" | test {metric} mean ± std | valid mean | best epochs | trainable outside heads | s/run |"
              + (" last layer's route entropy (nats) |" if entropy else "") + (" adapters chosen, balance |" if use else ""),
              "|---|" + "---:|" * len(seeds) + "---:|---:|---|---:|---:|" + ("---:|" if entropy else "") + ("---:|" if use else "")]
    best_first = -1 if HIGHER_IS_BETTER.get(metric, True) else 1  # ROC-AUC: highest first; RMSE: lowest first
    for method, rows in sorted(by_method.items(), key=lambda kv: best_first * statistics.mean(r["test"] for r in kv[1])):
        by_seed = {r["seed"]: r for r in rows}
        tests = [r["test"] for r in rows]
        spread = f" ± {statistics.stdev(tests):.4f}" if len(tests) > 1 else " (1 seed)"
        outside = rows[0].get("trainable_outside_heads")
        cells = " | ".join(f"{by_seed[k]['test']:.4f}" if k in by_seed else "–" for k in seeds)
        lines.append(f"| {method} | {cells} | {statistics.mean(tests):.4f}{spread} | {statistics.mean(r['valid'] for r in rows):.4f} | "
                     f"{', '.join(str(r['best_epoch']) for r in sorted(rows, key=lambda r: r['seed']))} | "
                     f"{f'{outside:,}' if outside is not None else '–'} of {rows[0]['total']:,} | {statistics.mean(r['train_seconds'] for r in rows):.0f} |"
                     + (f" {_last_layer_entropy(rows)} |" if entropy else "") + (f" {_last_layer_use(rows)} |" if use else ""))
    if result.get("errors"):
        lines += ["", "Failed runs: " + "; ".join(f"{e['method']} seed {e['seed']}" for e in result["errors"]) + "."]
    if result.get("withdrawn"):
        w = result["withdrawn"]
        lines += ["", f"Withdrawn from this file: {w['method']} ({w['why']})"]
    return "\n".join(lines) + "\n"


def _last_layer_entropy(rows: list[dict]) -> str:
    """Mean over a method's seeds of the last insertion layer's routing entropy at the best epoch."""
    values = [r["routing_entropy"][max(r["routing_entropy"], key=int)] for r in rows if r.get("routing_entropy")]
    return f"{statistics.mean(values):.3f}" if values else "–"


def _last_layer_use(rows: list[dict]) -> str:
    """Per seed, how many of the last layer's K adapters are some task's largest route, and the mean
    over seeds of the balance (entropy of the tasks' mean route / ln K): `1, 1 of 8; 0.00`."""
    used = [r["last_layer_use"] for r in sorted(rows, key=lambda r: r["seed"]) if r.get("last_layer_use")]
    if not used:
        return "–"
    return f"{', '.join(str(u['chosen']) for u in used)} of {used[0]['of']}; {statistics.mean(u['balance'] for u in used):.2f}"


def probe_tables(result: dict) -> str:
    """benchmarks/backbone_probe.py: per backbone file and method its seeds' test scores, mean ±
    sample std, valid mean ± sample std, best epochs; the backbone's fingerprint and how it was made
    (rows and summary as quality.py's, the `dataset` field holding the backbone file's stem)."""
    lines = [machine_line(result), "", f"Code: cft/ and recipes/ as at commit {result['code_commit']}. Dataset {result['dataset']} "
             f"(`{result['recipe']}`), split file `{Path(result['split_csv']).name}`; up to {result['epochs']} epochs, patience {result['patience']}."
             + (" **Partial: not every planned run has finished.**" if result.get("partial") else ""), ""]
    done = [r for r in result["rows"] if "error" not in r]
    seeds = sorted({r["seed"] for r in done})
    metric = done[0]["metric"] if done else "?"
    lines += ["| backbone | made by | fingerprint | method | " + " | ".join(f"seed {k}" for k in seeds) + f" | test {metric} mean ± std | valid mean ± std | best epochs |",
              "|---|---|---|---|" + "---:|" * len(seeds) + "---:|---:|---|"]
    for key, s in sorted(result["summary"].items(), key=lambda kv: -kv[1]["valid_mean"]):
        backbone, method = key.split("|")
        identity = result["backbones"][backbone]
        made = [f"{k} {v}" for k, v in (identity.get("info") or {}).items() if k in ("method", "epochs", "note")]
        made = ", ".join(made + [f"dropout {identity['config']['dropout']}"] if identity.get("config") else made) or "–"
        by_seed = {r["seed"]: r for r in done if (r["dataset"], r["method"]) == (backbone, method)}
        cells = " | ".join(f"{by_seed[k]['test']:.4f}" if k in by_seed else "–" for k in seeds)
        test = f"{s['test_mean']:.4f}" + (f" ± {s['test_sample_std']:.4f}" if s["test_sample_std"] is not None else " (1 seed)")
        valid = f"{s['valid_mean']:.4f}" + (f" ± {s['valid_sample_std']:.4f}" if s["valid_sample_std"] is not None else "")
        lines.append(f"| `{backbone}` | {made} | `{identity['fingerprint'][:8]}…` | {method} | {cells} | {test} | {valid} | "
                     f"{', '.join(map(str, s['best_epochs']))} |")
    return "\n".join(lines) + "\n"


def spectrum_tables(result: dict) -> str:
    """benchmarks/prior_spectrum.py's rows, as that script prints them."""
    from prior_spectrum import table

    return f"Code: cft/ and recipes/ as at commit {result['code_commit']}; {result['draws']} draws of E_0 per row. Command: `{result['command']}`.\n\n" + table(result["rows"])


def eval_batch_tables(result: dict) -> str:
    """benchmarks/eval_batch.py's rows, as that script prints them."""
    from eval_batch import table

    return machine_line(result) + "\n\n" + table(result)


def frozen_precision_tables(result: dict) -> str:
    """benchmarks/frozen_precision.py's rounds and ratios, as that script's `table` writes them."""
    from frozen_precision import table

    return machine_line(result) + "\n\n" + table(result)


def routing_cost_tables(result: dict) -> str:
    """benchmarks/routing_cost.py's rounds and step-time ratios, as that script's `table` writes them."""
    from routing_cost import table

    return machine_line(result) + "\n\n" + table(result)


def step_profile_tables(result: dict) -> str:
    """benchmarks/step_profile.py's groups, reference products and top operators, as its `table` writes them."""
    from step_profile import table

    return machine_line(result) + "\n\n" + table(result)


def narrow_banks_tables(result: dict) -> str:
    """benchmarks/narrow_banks.py: each setting's graphs/s per round, and the per-round ratios."""
    lines = [machine_line(result), "",
             f"`{result['recipe']}` (bank widths {', '.join(map(str, result['bank_widths']))}), batch {result['batch_size']}, {result['steps']} "
             f"training steps per setting and round, {len(result['rounds'])} rounds in alternating order, one process.", ""]
    return "\n".join(lines + _rounds_table(result, "Padded / unpadded"))


def _rounds_table(result: dict, ratio_name: str) -> list[str]:
    """Lines of an `alternating_rounds` result: each setting's median and per-round graphs/s, then the ratios."""
    rounds, names = result["rounds"], list(result["median_graphs_per_second"])
    ratios = [p["ratio"] for p in rounds]
    lines = ["| setting | median graphs/s | per round |", "|---|---:|---|"]
    for name in names:
        lines.append(f"| {name} | {result['median_graphs_per_second'][name]:.0f} | {', '.join(f'{p[name]:.0f}' for p in rounds)} |")
    above = sum(r > 1 for r in ratios)
    return lines + ["", f"{ratio_name}: median of the per-round ratios {result['median_ratio']:.3f} ({min(ratios):.3f}-{max(ratios):.3f}; "
                        f"above 1 in {above} of {len(ratios)} rounds)."]


def frozen_constants_tables(result: dict) -> str:
    """benchmarks/frozen_constants.py: operators dispatched per setting, then the training and inference rounds."""
    return _operators_and_rounds(result, ("kept", "recomputed"), "Kept / recomputed")


def merged_updates_tables(result: dict) -> str:
    """benchmarks/merged_updates.py: operators dispatched per setting and how far their values
    differ, then the training and inference rounds."""
    return _operators_and_rounds(result, ("merged", "apart"), "Merged / apart", (
        f"Logits differ by {result['logits_max_relative_difference']:.1e} of their largest, gradients by at most "
        f"{result['gradients_max_relative_difference']:.1e} of their norm (one step, the recipe's precision)."))


def scatter_kernels_tables(result: dict) -> str:
    """benchmarks/scatter_kernels.py: operators dispatched per setting and whether their values
    agree, then the training and inference rounds."""
    same = result["logits_equal"] and result["gradients_equal"]
    return _operators_and_rounds(result, ("index_add_", "scatter_add_"), "index_add_ / scatter_add_", (
        "Logits and gradients " + ("the same bit for bit" if same else "differ") + " (one step, the recipe's precision)."))


def _operators_and_rounds(result: dict, settings: tuple[str, str], ratio_name: str, note: str = "") -> str:
    """An in-process comparison of two settings of the code: operators dispatched per setting, `note`,
    then the training and inference rounds (`alternating_rounds`) with `ratio_name` for their ratio."""
    ops = result["operators"]
    lines = [machine_line(result), "",
             f"`{result['recipe']}`, batch {result['batch_size']}, {result['steps']} batches per setting and round (training steps, then "
             f"eval-mode passes without gradients), {len(result['training']['rounds'])} rounds in alternating order, one process.", "",
             f"| operators dispatched | {' | '.join(settings)} |", "|---|---:|---:|"]
    for part, label in (("training_forward", "training step, forward and loss"), ("training_backward", "training step, backward"),
                        ("inference", "inference pass")):
        lines.append(f"| {label} | {' | '.join(str(ops[name][part]) for name in settings)} |")
    if note:
        lines += ["", note]
    for what in ("training", "inference"):
        lines += ["", f"{what.capitalize()}:", ""] + _rounds_table(result[what], ratio_name)
    return "\n".join(lines)


def optimizer_step_tables(result: dict) -> str:
    """benchmarks/optimizer_step.py: milliseconds per AdamW step by implementation and parameter set."""
    names = list(next(iter(result["sets"].values()))["median_ms"])
    lines = [machine_line(result), "",
             f"Median over {result['rounds']} rounds of {result['steps']} steps each, the implementations in alternating order, one process; ms per step.", "",
             "| trainable tensors | tensors | weights | " + " | ".join(names) + " |", "|---|---:|---:|" + "---:|" * len(names)]
    for name, each in result["sets"].items():
        lines.append(f"| {name} | {each['tensors']} | {each['weights']:,} | " + " | ".join(f"{each['median_ms'][n]:.2f}" for n in names) + " |")
    return "\n".join(lines)


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a heading's text: lower case, every character but letters, digits,
    spaces, hyphens and underscores dropped, spaces made hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def contents(text: str) -> str:
    """A list of the document's `##` and `###` headings (outside code fences) linked to their
    anchors, `###` indented under its `##`; a heading text seen before gets GitHub's -1, -2 suffix."""
    lines, seen, fenced = [], {}, False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        match = None if fenced else re.match(r"(##|###) (.+)$", line)
        if not match:
            continue
        level, title = match.groups()
        anchor = github_anchor(title)
        count = seen.get(anchor, 0)
        seen[anchor] = count + 1
        lines.append(f"{'  ' if level == '###' else ''}- [{title}](#{anchor}{f'-{count}' if count else ''})")
    return "\n".join(lines) + "\n"


def replace_block(text: str, name: str, body: str) -> str:
    pattern = re.compile(rf"(<!-- begin:{name} -->\n).*?(<!-- end:{name} -->)", re.S)
    if not pattern.search(text):
        raise SystemExit(f"BENCHMARKS.md has no block {name}")
    return pattern.sub(lambda m: m.group(1) + body.rstrip() + "\n" + m.group(2), text)


def _precision_note(precision: str) -> str:
    """How a time-to-result run's steps computed, as the cft row names it ("" for fp32)."""
    return {"fp32": "", "bf16 autocast": " (bf16 steps)"}.get(precision, f" ({precision})")


def main() -> None:
    path = REPO / "BENCHMARKS.md"
    text = path.read_text()
    for name, loader, render in (
        ("speed", "speed.json", speed_tables),
        ("speed-quick", "speed_quick.json", speed_tables),
        ("speed-recipes", "speed_recipes.json", speed_tables),
        ("speed-lone-expert", "speed_lone_expert.json", speed_tables),
        ("speed-batch64", "speed_batch64.json", speed_tables),
        ("speed-bf16", "speed_bf16.json", speed_tables),
        ("speed-ttr", "speed_ttr.json", speed_tables),
        ("speed-bondtable", "speed_bondtable.json", speed_tables),
        ("speed-l14", "speed_l14.json", speed_tables),
        ("speed-ttr15", "speed_ttr15.json", speed_tables),
        ("speed-fold", "speed_fold.json", speed_tables),
        ("speed-frozen-bf16", "speed_frozen_bf16.json", speed_tables),
        ("speed-frozen-bf16-ttr2", "speed_frozen_bf16_ttr2.json", speed_tables),
        ("speed-recipe-ema", "speed_recipe_ema.json", speed_tables),
        ("speed-k8-frozen-bf16", "speed_k8_frozen_bf16.json", speed_tables),
        ("speed-recipe-epyc", "speed_recipe_epyc.json", speed_tables),
        ("speed-recipe-emb", "speed_recipe_emb.json", speed_tables),
        ("speed-frozen-bf16-epyc", "speed_frozen_bf16_epyc.json", speed_tables),
        ("speed-recipe-epyc-d4ed106", "speed_recipe_epyc_d4ed106.json", speed_tables),
        ("speed-recipe-vn-epyc", "speed_recipe_vn_epyc.json", speed_tables),
        ("speed-narrow-banks-epyc", "speed_narrow_banks_epyc.json", speed_tables),
        ("speed-k8-routed-epyc", "speed_k8_routed_epyc.json", speed_tables),
        ("narrow-banks-tox21", "narrow_banks_tox21.json", narrow_banks_tables),
        ("narrow-banks-tox21-1thread", "narrow_banks_tox21_1thread.json", narrow_banks_tables),
        ("narrow-banks-toxcast", "narrow_banks_toxcast.json", narrow_banks_tables),
        ("narrow-banks-esol", "narrow_banks_esol.json", narrow_banks_tables),
        ("frozen-constants-tox21", "frozen_constants_tox21.json", frozen_constants_tables),
        ("merged-updates-tox21", "merged_updates_tox21.json", merged_updates_tables),
        ("scatter-kernels-tox21", "scatter_kernels_tox21.json", scatter_kernels_tables),
        ("speed-constants-epyc", "speed_constants_epyc.json", speed_tables),
        ("speed-k8-routed-constants-epyc", "speed_k8_routed_constants_epyc.json", speed_tables),
        ("optimizer-step", "optimizer_step.json", optimizer_step_tables),
        ("speed-fused-epyc", "speed_fused_epyc.json", speed_tables),
        ("speed-backward-epyc", "speed_backward_epyc.json", speed_tables),
        ("speed-eval128-epyc", "speed_eval128_epyc.json", speed_tables),
        ("frozen-precision", "frozen_precision.json", frozen_precision_tables),
        ("routing-cost", "routing_cost.json", routing_cost_tables),
        ("routing-cost-final", "routing_cost_final.json", routing_cost_tables),
        ("speed-final-epyc", "speed_final_epyc.json", speed_tables),
        ("speed-merged-epyc", "speed_merged_epyc.json", speed_tables),
        ("routing-cost-merged", "routing_cost_merged.json", routing_cost_tables),
        ("speed-index-add-epyc", "speed_index_add_epyc.json", speed_tables),
        ("routing-cost-index-add", "routing_cost_index_add.json", routing_cost_tables),
        ("frozen-precision-esol", "frozen_precision_esol.json", frozen_precision_tables),
        ("eval-batch-valid-epyc", "eval_batch_valid_epyc.json", eval_batch_tables),
        ("eval-batch", "eval_batch.json", eval_batch_tables),
        ("eval-batch-1thread", "eval_batch_1thread.json", eval_batch_tables),
        ("quality", "quality.json", quality_tables),
        ("quality-quick", "quality_quick.json", quality_tables),
        ("routing", "routing.json", routing_tables),
        ("routing-levers", "routing_levers.json", levers_tables),
        ("peers", "peers.json", peers_tables),
        ("peers-mlp", "peers_mlp.json", peers_tables),
        ("peers-mlp-k1", "peers_mlp_k1.json", peers_tables),
        ("peers-placement", "peers_placement.json", peers_tables),
        ("peers-output-k1", "peers_output_k1.json", peers_tables),
        ("peers-frozen-dropout", "peers_frozen_dropout.json", peers_tables),
        ("peers-esol", "peers_esol.json", peers_tables),
        ("peers-esol-xeon", "peers_esol_xeon.json", peers_tables),
        ("peers-esol-10seeds", "peers_esol_10seeds.json", peers_tables),
        ("peers-toxcast", "peers_toxcast.json", peers_tables),
        ("peers-tox21-epyc", "peers_tox21_epyc.json", peers_tables),
        ("peers-tox21-e20", "peers_tox21_e20.json", peers_tables),
        ("peers-tox21-e20-recipe", "peers_tox21_e20_recipe_epyc.json", peers_tables),
        ("peers-tox21-e25-recipe", "peers_tox21_e25_recipe_epyc.json", peers_tables),
        ("peers-tox21-b128", "peers_tox21_b128_epyc.json", peers_tables),
        ("step-profile", "step_profile.json", step_profile_tables),
        ("peers-tox21-ema", "peers_tox21_ema.json", peers_tables),
        ("peers-tox21-hivmuv", "peers_tox21_hivmuv.json", peers_tables),
        ("peers-tox21-xeon10", "peers_tox21_xeon10.json", peers_tables),
        ("peers-tox21-frozen-bf16", "peers_tox21_frozen_bf16.json", peers_tables),
        ("peers-esol-frozen-bf16", "peers_esol_frozen_bf16.json", peers_tables),
        ("peers-tox21-select-loss", "peers_tox21_select_loss.json", peers_tables),
        ("peers-tox21-spread", "peers_tox21_spread.json", peers_tables),
        ("peers-esol-spread", "peers_esol_spread.json", peers_tables),
        ("peers-tox21-lora-full", "peers_tox21_lora_full_xeon.json", peers_tables),
        ("peers-tox21-vn", "peers_tox21_vn10_xeon.json", peers_tables),
        ("peers-toxcast-xeon", "peers_toxcast_xeon.json", peers_tables),
        ("peers-tox21-emb", "peers_tox21_emb10.json", peers_tables),
        ("peers-esol-emb", "peers_esol_emb_ema.json", peers_tables),
        ("peers-toxcast-emb", "peers_toxcast_emb.json", peers_tables),
        ("peers-toxcast-full-xeon", "peers_toxcast_full_xeon.json", peers_tables),
        ("peers-tox21-balanced1", "peers_balanced1_all.json", peers_tables),
        ("peers-esol-balanced1", "peers_esol_balanced1.json", peers_tables),
        ("peers-esol-balanced1-epyc", "peers_esol_balanced1_epyc.json", peers_tables),
        ("peers-tox21-own-ranks", "peers_tox21_own_ranks_epyc.json", peers_tables),
        ("peers-tox21-full-epyc", "peers_tox21_full_epyc.json", peers_tables),
        ("peers-tox21-e50", "peers_tox21_e50_epyc.json", peers_tables),
        ("peers-tox21-screens", "peers_tox21_screens_epyc.json", peers_tables),
        ("peers-tox21-pt10", "peers_tox21_pt10_epyc.json", peers_tables),
        ("peers-tox21-lr", "peers_tox21_lr_epyc.json", peers_tables),
        ("peers-tox21-frozen-dropout", "peers_tox21_frozen_dropout02_epyc.json", peers_tables),
        ("peers-tox21-frozen-bf16-epyc", "peers_tox21_frozen_bf16_epyc.json", peers_tables),
        ("peers-tox21-masking-contrastive", "peers_tox21_masking_contrastive_epyc.json", peers_tables),
        ("peers-tox21-contrastive", "peers_tox21_contrastive_epyc.json", peers_tables),
        ("peers-tox21-hivmuv-7ep", "peers_tox21_hivmuv_7ep_epyc.json", peers_tables),
        ("peers-tox21-hivmuv-7ep-vn", "peers_tox21_hivmuv_7ep_vn_epyc.json", peers_tables),
        ("peers-tox21-vn-lr005", "peers_tox21_vn_lr005_epyc.json", peers_tables),
        ("peers-tox21-lora-vn-emb-epyc", "peers_tox21_lora_vn_emb_epyc.json", peers_tables),
        ("peers-tox21-lora-vn-emb-lr005-epyc", "peers_tox21_lora_vn_emb_lr005_epyc.json", peers_tables),
        ("peers-toxcast-lora16-epyc", "peers_toxcast_lora16_epyc.json", peers_tables),
        ("peers-tox21-narrow-banks", "peers_tox21_narrow_banks_epyc.json", peers_tables),
        ("peers-tox21-fused-adamw", "peers_tox21_fused_adamw_epyc.json", peers_tables),
        ("peers-tox21-frozen-bf16-backward", "peers_tox21_frozen_bf16_backward_epyc.json", peers_tables),
        ("peers-tox21-full-fused", "peers_tox21_full_fused_epyc.json", peers_tables),
        ("peers-esol-input-grads-bf16", "peers_esol_input_grads_bf16_epyc.json", peers_tables),
        ("peers-toxcast-input-grads-bf16", "peers_toxcast_input_grads_bf16_epyc.json", peers_tables),
        ("peers-tox21-default-input-grads-bf16", "peers_tox21_default_input_grads_bf16_epyc.json", peers_tables),
        ("peers-tox21-merged", "peers_tox21_merged_epyc.json", peers_tables),
        ("peers-esol-merged", "peers_esol_merged_epyc.json", peers_tables),
        ("prior-spectrum", "prior_spectrum.json", spectrum_tables),
        ("backbone-probe-bn", "backbone_probe_bn.json", probe_tables),
        ("backbone-probe-pretrain", "backbone_probe_pretrain.json", probe_tables),
        ("backbone-probe-adapters", "backbone_probe_adapters.json", probe_tables),
    ):
        result = _load(loader)
        if result is not None and f"<!-- begin:{name} -->" in text:
            text = replace_block(text, name, render(result))
    if "<!-- begin:contents -->" in text:
        text = replace_block(text, "contents", contents(text))
    path.write_text(text)
    print(f"updated {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
