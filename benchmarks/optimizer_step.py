"""What one AdamW step costs, per implementation: torch's per-tensor loop (its CPU default), its
foreach version and its fused kernel (what `cft.training.optim.make_optimizer` takes on a CPU or
GPU since 127b2fd), over the trainable tensors of the Tox21 recipe's adapters and of full
fine-tuning of the same backbone, in one process.

    python benchmarks/optimizer_step.py [--rounds 7] [--steps 200] [--threads 2] [--json benchmarks/results/optimizer_step.json]

Each round times `--steps` optimiser steps of every implementation on random gradients, the
implementations in alternating order from round to round; the medians over the rounds are
reported in milliseconds per step.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from training_steps import benchmark_parser, training_setup  # noqa: E402

from cft.files.atomic import atomic_write_json  # noqa: E402
from cft.nn.backbone import Backbone  # noqa: E402

IMPLEMENTATIONS = {"per-tensor loop": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}


def parameter_sets(data: Path) -> dict[str, list[torch.nn.Parameter]]:
    """The recipe's trainable tensors (adapters and heads) and every tensor of a backbone like its own."""
    model, _, _ = training_setup(REPO / "recipes" / "tox21.yaml", data, 1)
    return {"the Tox21 recipe's adapters": [p for p in model.parameters() if p.requires_grad],
            "full fine-tuning": list(Backbone(model.backbone.spec).parameters())}


def milliseconds_per_step(params: list[torch.nn.Parameter], options: dict, steps: int) -> float:
    optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01, **options)
    for _ in range(5):
        optimizer.step()
    start = time.perf_counter()
    for _ in range(steps):
        optimizer.step()
    return (time.perf_counter() - start) / steps * 1e3


def main() -> None:
    parser = benchmark_parser(__doc__, "optimizer_step.json", rounds=7, steps=200, threads=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from provenance import machine

    result = {"machine": machine() | {"torch_threads": args.threads}, "steps": args.steps, "rounds": args.rounds,
              "command": f"python benchmarks/optimizer_step.py --rounds {args.rounds} --steps {args.steps} --threads {args.threads}", "sets": {}}
    for name, params in parameter_sets(args.data.resolve()).items():
        for p in params:
            p.grad = torch.randn_like(p)
        times: dict[str, list[float]] = {impl: [] for impl in IMPLEMENTATIONS}
        for r in range(args.rounds):
            order = list(IMPLEMENTATIONS.items()) if r % 2 == 0 else list(reversed(IMPLEMENTATIONS.items()))
            for impl, options in order:
                times[impl].append(milliseconds_per_step(params, options, args.steps))
        result["sets"][name] = {"tensors": len(params), "weights": sum(p.numel() for p in params),
                                "median_ms": {impl: statistics.median(t) for impl, t in times.items()}, "ms_per_round": times}
        print(f"{name}: {len(params)} tensors, " + ", ".join(f"{impl} {statistics.median(t):.2f} ms" for impl, t in times.items()), flush=True)
    atomic_write_json(args.json, result)


if __name__ == "__main__":
    main()
