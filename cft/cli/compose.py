"""`cft compose A.safetensors B.safetensors [...] -o AB.safetensors`."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import numpy as np
import typer

from cft.cli import app
from cft.cli.common import DataRootOption, DeviceOption, SetOption
from cft.console import out


@app.command(
    "compose",
    epilog="Example: cft compose runs/nr/bundle.safetensors runs/sr/bundle.safetensors --prior-from tox21.csv --data-root data -o nr_sr.safetensors",
)
def compose_command(
    bundles: List[Path] = typer.Argument(..., help="Bundles (or run folders) to compose, in the order their tasks and adapters take."),
    output: Path = typer.Option(..., "--output", "-o", help="The composed bundle (.safetensors) to write; an existing file is replaced (atomically), an input bundle never."),
    prior: Optional[str] = typer.Option(None, "--prior", help="Relation matrix over all tasks: .npy (with its .tasks.json, if any) or .csv with task names as header and index."),
    prior_from: Optional[str] = typer.Option(None, "--prior-from", help="Compute the prior from the training labels of this CSV (or recipe YAML) covering every task."),
    mode: str = typer.Option("route", "--mode", help="route (keep every adapter, route between them) or merge into one adapter per layer: linear, svd, cat (as PEFT's add_weighted_adapter)."),
    weights: Optional[str] = typer.Option(None, "--weights", metavar="W1,W2,...", help="Merge modes: one weight per bundle (default 1 each)."),
    rename: Optional[List[str]] = typer.Option(None, "--rename", metavar="[N:]OLD=NEW", help="Rename a task (in bundle N, or in the later bundles holding it); repeatable."),
    compose_steps: Optional[int] = typer.Option(None, "--compose-steps", min=0, help="k: propagation steps of the parts' routes over the composed prior (0: each part routes only to its own adapters)."),
    compose_threshold: Optional[float] = typer.Option(None, "--compose-threshold", help="Gate threshold on the routes a task gives to other bundles' adapters."),
    compose_rule: Optional[str] = typer.Option(None, "--compose-rule", help="residual (each part keeps its routes; a prior-derived share goes to other bundles) or propagate (the reference rule of docs/method.md)."),
    compose_mix: Optional[float] = typer.Option(None, "--compose-mix", help="residual: scales the share of route mass a task gives to other bundles (0: none, 1: its prior neighbourhood's share)."),
    method: str = typer.Option("phi", "--method", help="--prior-from statistic: phi, jaccard or cosine."),
    min_support: int = typer.Option(20, "--min-support", min=1, help="--prior-from: minimum co-labelled molecules for an edge."),
    min_value: float = typer.Option(0.1, "--min-value", min=0.0, help="--prior-from: edges weaker than this are dropped."),
    top_k: Optional[int] = typer.Option(None, "--top-k", min=1, help="--prior-from: keep each task's K strongest links."),
    calibrate: Optional[Path] = typer.Option(None, "--calibrate", metavar="RECIPE", help="Then train only routing and task embeddings as this recipe says (data, lr, train.max_steps; default 200 steps; no weight average). Parts need routed adapters (adapters.num_adapters > 1)."),
    sets: Optional[List[str]] = SetOption,
    calibrate_dir: Optional[Path] = typer.Option(None, "--calibrate-dir", help="Run folder of the calibration (default: OUTPUT without .safetensors, plus .calibration)."),
    data_root: Optional[str] = DataRootOption,
    backbone: Optional[Path] = typer.Option(None, "--backbone", help="Backbone file for --calibrate (default: found by fingerprint beside the bundles)."),
    device: Optional[str] = DeviceOption,
) -> None:
    """Compose bundles trained on different tasks into one bundle that predicts all of them."""
    from cft.compose.assemble import (
        DEFAULT_COMPOSE_MIX,
        DEFAULT_COMPOSE_RULE,
        DEFAULT_COMPOSE_STEPS,
        DEFAULT_COMPOSE_THRESHOLD,
    )
    from cft.compose.calibrate import calibrate as run_calibration
    from cft.compose.composition import compose
    from cft.errors import CftError
    from cft.recipe.load import resolve_data_root

    if output.suffix != ".safetensors":
        raise CftError(f"-o {output}: a bundle is written as .safetensors.")
    if output.exists() and output.is_dir():
        raise CftError(f"-o {output} is a folder; name the bundle file to write.")
    from cft.files.bundle import resolve_bundle_path

    if any(resolve_bundle_path(b).resolve() == output.resolve() for b in bundles):
        raise CftError(f"-o {output} is one of the bundles to compose; write the composed bundle elsewhere.")
    if mode != "route" and any(v is not None for v in (compose_steps, compose_threshold, compose_rule, compose_mix)):
        raise CftError("--compose-steps/-threshold/-rule/-mix shape routing; they apply to --mode route only.")
    if sets and not calibrate:
        raise CftError("--set overrides the --calibrate recipe; give --calibrate RECIPE too.")
    parsed_weights = None
    if weights is not None:
        try:
            parsed_weights = [float(w) for w in weights.split(",") if w.strip()]
        except ValueError:
            raise CftError(f"--weights {weights!r}: expected comma-separated numbers, e.g. --weights 0.5,0.5.") from None
    composition = compose(
        bundles, mode=mode, prior=prior, prior_from=prior_from, data_root=resolve_data_root(data_root, None),
        weights=parsed_weights, renames=rename or [],
        compose_steps=DEFAULT_COMPOSE_STEPS if compose_steps is None else compose_steps,
        compose_threshold=DEFAULT_COMPOSE_THRESHOLD if compose_threshold is None else compose_threshold,
        compose_rule=compose_rule or DEFAULT_COMPOSE_RULE,
        compose_mix=DEFAULT_COMPOSE_MIX if compose_mix is None else compose_mix,
        method=method, min_support=min_support, min_value=min_value, top_k=top_k,
    )
    if calibrate:
        run_dir = calibrate_dir or output.with_name(output.name.removesuffix(".safetensors") + ".calibration")
        model, summary = run_calibration(composition, calibrate, sets or [], run_dir, data_root, device, str(backbone) if backbone else None)
        composition.model = model
        composition.provenance["calibration"] = {
            "recipe": str(calibrate), "overrides": list(sets or []), "run": str(run_dir), "steps": _steps(run_dir),
            "valid": summary["valid"]["mean"], "test": summary["test"]["mean"],
        }
        composition.metrics = {"metric": summary["metric"], "valid": summary["valid"]["mean"], "test": summary["test"]["mean"]}
    composition.save(output)
    _print_summary(composition, output)


def _steps(run_dir: Path) -> int:
    import json

    lines = (run_dir / "metrics.jsonl").read_text().splitlines() if (run_dir / "metrics.jsonl").exists() else []
    return int(json.loads(lines[-1])["step"]) if lines else 0


def _print_summary(composition, output: Path) -> None:
    from rich.table import Table

    from cft.views.routing import cross_mass, load_report

    spec = composition.model.spec
    prov = composition.provenance
    table = Table(title=f"cft compose: {output}", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    table.add_row("mode", prov["mode"])
    for i, s in enumerate(composition.sources, start=1):
        table.add_row(f"bundle {i}", f"{s.path} ({len(s.tasks)} tasks, sha256 {s.sha256[:12]})")
    table.add_row("tasks", str(len(spec.tasks)))
    layers = composition.model.router.layer_sizes
    if layers:
        table.add_row("adapters per layer", ", ".join(f"{layer}: {k}" for layer, k in sorted(layers.items())) + f" (rank {spec.bank_rank}"
                      + (f"; the virtual node's banks {spec.virtual_node_rank}" if spec.virtual_node_rank is not None else "")
                      + (f"; the embeddings' bank {spec.embeddings_rank}" if spec.embeddings_rank is not None else "") + ")")
    prior = prov["prior"]
    table.add_row("prior", prior["source"] + (f" ({prior.get('path') or prior.get('data')})" if prior.get("path") or prior.get("data") else ""))
    if prov["mode"] == "route":
        table.add_row("composed routes", f"{prov['compose_rule']}, steps {prov['compose_steps']}, threshold {prov['compose_threshold']:g}"
                      + (f", mix {prov['compose_mix']:g}" if prov["compose_rule"] == "residual" else ""))
        report = load_report(output)
        if len(report.parts) > 1:
            mass = np.mean([cross_mass(report, layer) for layer in report.layers], axis=0)
            off = [1.0 - mass[p, p] for p in range(len(report.parts))]
            table.add_row("cross-bundle route mass", ", ".join(f"{name} {value:.3f}" for (name, _, _), value in zip(report.parts, off)))
    else:
        table.add_row("weights", ", ".join(f"{w:g}" for w in prov["weights"]))
    if "calibration" in prov:
        cal = prov["calibration"]
        table.add_row("calibration", f"{cal['steps']} steps, valid {composition.metrics['metric']} {cal['valid']:.4f}, test {cal['test']:.4f} (run {cal['run']})")
    out.print(table)
