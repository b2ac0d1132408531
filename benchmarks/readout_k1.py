"""What the one-expert read-out saves: training steps of the recipes' model (Tox21, GIN-VN 300x5,
one linear rank-12 adapter on both GIN MLP Linears of every layer, task read-out) with and without
it, side by side in one process.

    python benchmarks/readout_k1.py [--rounds 5] [--steps 40] [--threads 1] [--json benchmarks/results/readout_k1.json]

With one adapter at the expert layer L* every gate is 1, so `CftModel._lone_expert` runs the
adapted layers once into W z_1 + c. Without it (the code before, restored here by patching that
method to False), the last layer also ran once unadapted for z_0 and the expert's change D_1 was
computed beside it. Each round times `--steps` training steps (forward, backward, AdamW) of each
path on the same batches, the two in alternating order from round to round; the median of the
per-round ratios is reported. The backbone is randomly initialised (the cost does not depend on
its weights). One thread by default, so that the ratio does not depend on what else the machine
runs.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from training_steps import alternating_rounds, benchmark_parser, graphs_per_second, round_summary, training_setup  # noqa: E402

from cft.files.atomic import atomic_write_json  # noqa: E402
from cft.nn.model import CftModel  # noqa: E402

BATCH = 32
ORIGINAL = CftModel._lone_expert  # restored after each measurement of the expert path


def timed(model: CftModel, optimizer, batches, lone_expert: bool) -> float:
    """Graphs/s of training steps on the one-pass read-out (`lone_expert`) or the expert path."""
    CftModel._lone_expert = ORIGINAL if lone_expert else (lambda self: False)
    return graphs_per_second(model, optimizer, batches)


def main() -> None:
    parser = benchmark_parser(__doc__, "readout_k1.json", rounds=5, steps=40, threads=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from provenance import machine

    model, optimizer, batches = training_setup(REPO / "recipes" / "tox21.yaml", args.data.resolve(), args.steps, BATCH, ["backbone.pretrain=null"])
    assert model._lone_expert(), "the recipe no longer has one expert at L*: nothing to measure"
    for lone in (True, False):  # warm-up of both paths
        timed(model, optimizer, batches[:5], lone)
    timings = {"one pass": lambda: timed(model, optimizer, batches, True), "expert path": lambda: timed(model, optimizer, batches, False)}
    rounds = alternating_rounds(timings, args.rounds, ("one pass", "expert path"))
    CftModel._lone_expert = ORIGINAL
    command = f"python benchmarks/readout_k1.py --rounds {args.rounds} --steps {args.steps} --threads {args.threads}"
    result = {"machine": machine() | {"torch_threads": args.threads}, "command": command, "batch_size": BATCH, "steps": args.steps,
              "rounds": rounds} | round_summary(rounds, timings)
    print(f"median ratio one pass / expert path: {result['median_ratio']:.3f}")
    atomic_write_json(args.json, result)


if __name__ == "__main__":
    main()
