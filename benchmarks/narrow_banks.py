"""What padding a narrow bank's products to 16 hidden units saves: training steps of a recipe's
model (by default recipes/tox21.yaml as shipped: one linear rank-10 adapter on both Linears of
every GIN and virtual-node MLP and on the atom embeddings) with and without it, side by side in
one process.

    python benchmarks/narrow_banks.py [--recipe recipes/tox21.yaml] [--rounds 7] [--steps 30] [--threads 2]
                                      [--json benchmarks/results/narrow_banks.json]

A bank of K*r < 16 hidden units computes its update with zero units appended up to 16
(`cft.nn.adapters.MIN_PRODUCT_WIDTH`): the same update and gradients, products of 16 columns
instead of K*r. Without it (MIN_PRODUCT_WIDTH set to 1 here, the code before) each product has
K*r columns. Each round times `--steps` training steps (forward, backward, AdamW) of each setting
on the same batches of the recipe's batch size, the two in alternating order from round to round;
the median of the per-round ratios is reported, with every round's pair. The backbone is randomly
initialised (the cost does not depend on its weights); its products are fp32, as the shipped
recipes run them on a CPU without AMX.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from training_steps import alternating_rounds, benchmark_parser, graphs_per_second, round_summary, training_setup  # noqa: E402

import cft.nn.adapters as adapters  # noqa: E402
from cft.files.atomic import atomic_write_json  # noqa: E402

PADDED = adapters.MIN_PRODUCT_WIDTH
SETTINGS = {f"padded to {PADDED}": PADDED, "unpadded": 1}


def bank_widths(model) -> list[int]:
    """The distinct widths K*r of the model's adapter banks."""
    return sorted({m.num_adapters * m.rank for m in model.modules() if isinstance(m, adapters.AdapterBank)})


def timed(model, optimizer, batches, width: int) -> float:
    """Graphs/s of training steps with banks narrower than `width` padded to it (1: none)."""
    adapters.MIN_PRODUCT_WIDTH = width
    return graphs_per_second(model, optimizer, batches)


def main() -> None:
    parser = benchmark_parser(__doc__, "narrow_banks.json", rounds=7, steps=30, threads=2)
    parser.add_argument("--recipe", default="recipes/tox21.yaml")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from provenance import machine

    model, optimizer, batches = training_setup(REPO / args.recipe, args.data.resolve(), args.steps)
    widths = bank_widths(model)
    if min(widths) >= PADDED:
        raise SystemExit(f"{args.recipe}: every bank is at least {PADDED} units wide ({widths}): nothing to measure")
    for width in SETTINGS.values():  # warm-up of both settings
        timed(model, optimizer, batches[:5], width)
    timings = {name: (lambda width=width: timed(model, optimizer, batches, width)) for name, width in SETTINGS.items()}
    rounds = alternating_rounds(timings, args.rounds, (f"padded to {PADDED}", "unpadded"))
    adapters.MIN_PRODUCT_WIDTH = PADDED
    command = f"python benchmarks/narrow_banks.py --recipe {args.recipe} --rounds {args.rounds} --steps {args.steps} --threads {args.threads}"
    result = {"machine": machine() | {"torch_threads": args.threads}, "command": command, "recipe": args.recipe, "bank_widths": widths,
              "batch_size": len(batches[0].y), "steps": args.steps, "rounds": rounds} | round_summary(rounds, SETTINGS)
    print(f"median ratio padded / unpadded: {result['median_ratio']:.3f}")
    atomic_write_json(args.json, result)


if __name__ == "__main__":
    main()
