"""What routing costs: training steps of eight routed adapters (K=8 r=8) against one adapter of the
same bank width (K=1 r=64, uniform routing) and one of rank 8 (K=1 r=8), side by side in one process.

    python benchmarks/routing_cost.py [--rounds 9] [--steps 40] [--threads 2]
                                      [--json benchmarks/results/routing_cost.json]

The models are benchmarks/speed.py's modes of the same names, on its base recipe (frozen GIN-VN
300x5 on Tox21, routed banks on every layer's output, batch 32), so the ratio is #14's third bar
("K=8 routed adapters <= 1.1x the step time of one adapter of the same bank width") measured
without the 10-15% that separate processes differ by on a shared machine. Both wide banks are 64
units: the same adapter arithmetic, so what separates them is the router (task embeddings
propagated over the task graph, the gate's temperature and threshold), the per-node mixing
weights and the prior-consistency regulariser in the loss. Every step is `cft train`'s: forward
with routes, `cft.training.trainer.batch_loss` (task loss + reg_strength x regulariser),
backward, AdamW, the frozen products at the precision `train.frozen_bf16` resolves to on this CPU
(recorded as "frozen_bf16"). Each round times `--steps` steps of every model on the same batches, in
alternating order from round to round; the medians of the per-round step-time ratios are reported,
with every round. The backbones are randomly initialised (a step's cost does not depend on them).
"""

from __future__ import annotations

import statistics
import sys
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from speed import BASE_RECIPE, BATCH, MODES  # noqa: E402
from training_steps import alternating_rounds, benchmark_parser, graphs_per_second, rounds_markdown, training_setup  # noqa: E402

from cft.files.atomic import atomic_write_json  # noqa: E402
from cft.nn.frozen import PRECISION_NAMES  # noqa: E402
from cft.recipe.load import load_recipe  # noqa: E402
from cft.training.inference import frozen_bf16_wanted  # noqa: E402

ROUTED, SAME_WIDTH, ONE = "cft adapters K=8 r=8 (routed)", "cft one adapter K=1 r=64", "cft one adapter K=1 r=8"
SETTINGS = (ROUTED, SAME_WIDTH, ONE)
# name -> (a, b): the step time of b over that of a, i.e. graphs/s of a over graphs/s of b
RATIOS = {
    "K=8 r=8 routed step time / one adapter K=1 r=64 (same bank width; target <= 1.1)": (SAME_WIDTH, ROUTED),
    "K=8 r=8 routed step time / one adapter K=1 r=8": (ONE, ROUTED),
}


def step_time_ratios(rounds: list[dict]) -> dict[str, dict]:
    """Per entry of RATIOS: the median, min and max over rounds of graphs/s(a) / graphs/s(b), the
    step time of b over that of a."""
    out = {}
    for name, (a, b) in RATIOS.items():
        per_round = [r[a] / r[b] for r in rounds]
        out[name] = {"median": statistics.median(per_round), "min": min(per_round), "max": max(per_round), "per_round": per_round}
    return out


def main() -> None:
    parser = benchmark_parser(__doc__, "routing_cost.json", rounds=9, steps=40, threads=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from provenance import machine

    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "base.yaml"
        base.write_text(BASE_RECIPE % (BATCH, args.steps))
        setups = {name: training_setup(base, args.data.resolve(), args.steps, overrides=MODES[name]) for name in SETTINGS}
        trains = {name: load_recipe(base, MODES[name]).train for name in SETTINGS}
    for name, (model, optimizer, batches) in setups.items():  # warm-up: the allocator and each model's shapes
        graphs_per_second(model, optimizer, batches[:5], trains[name])
    timings = {name: (lambda name=name: graphs_per_second(*setups[name], trains[name])) for name in SETTINGS}
    rounds = alternating_rounds(timings, args.rounds, (SAME_WIDTH, ROUTED))
    first_model = setups[ROUTED][0]
    command = f"python benchmarks/routing_cost.py --rounds {args.rounds} --steps {args.steps} --threads {args.threads}"
    result = {
        "machine": machine() | {"torch_threads": args.threads}, "command": command, "batch_size": BATCH, "steps": args.steps,
        "modes": {name: MODES[name] for name in SETTINGS},
        "trainable": {name: sum(p.numel() for p in setups[name][0].parameters() if p.requires_grad) for name in SETTINGS},
        "reg_strength": trains[ROUTED].reg_strength, "frozen_bf16": frozen_bf16_wanted(trains[ROUTED].frozen_bf16, torch.device("cpu")), "tasks": len(first_model.spec.tasks), "rounds": rounds,
        "median_graphs_per_second": {name: statistics.median(r[name] for r in rounds) for name in SETTINGS},
        "step_time_ratios": step_time_ratios(rounds),
    }
    for name, r in result["step_time_ratios"].items():
        print(f"{name}: {r['median']:.3f} (median of {len(rounds)} rounds, {r['min']:.3f}-{r['max']:.3f})", flush=True)
    atomic_write_json(args.json, result)


def table(result: dict) -> str:
    """Markdown: every round's graphs/s per model, the medians, and the step-time ratios."""
    lines = [f"Tox21, GIN-VN 300×5 frozen, batch {result['batch_size']}, {result['steps']} training steps (`cft train`'s loss, "
             f"reg_strength {result['reg_strength']:g}; {PRECISION_NAMES[result.get('frozen_bf16', False)]}) per model and round, {len(result['rounds'])} rounds in alternating order, one process.", ""]
    lines += rounds_markdown(result["rounds"], SETTINGS, result["median_graphs_per_second"], "step-time ratio", result["step_time_ratios"], digits=3)
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
