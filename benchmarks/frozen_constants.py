"""What keeping a frozen backbone's derived constants saves: training steps and inference passes
of a recipe's model (by default recipes/tox21.yaml) with and without `cft.nn.constants`'
caching, side by side in one process.

    python benchmarks/frozen_constants.py [--recipe recipes/tox21.yaml] [--rounds 9] [--steps 30]
                                          [--batch-size N] [--threads 2] [--json benchmarks/results/frozen_constants.json]

With a frozen backbone, every eval-mode BatchNorm folded into the Linear before it and every bond
encoder's table of the bond-feature combinations are the same at every step; `FrozenValue`
computes them once. Without it (`FrozenValue.__call__` replaced here by one that computes every
time: the code before, except that the task graph's normalisation, cached before too, is also
recomputed: a few operators on a [T, T] matrix) each forward recomputes them. Each round times
`--steps` training steps (forward, backward, AdamW) and then eval-mode forward passes without
gradients over the same batches, per setting, the settings in alternating order from round to
round; the medians of the per-round ratios are reported, with every round's pair. Before the rounds it
counts the operators each setting dispatches (torch's dispatch mode, below autograd) in one
training step's forward and backward and one inference pass: exact where the timings are noisy.
The backbone is randomly initialised (the cost does not depend on its weights); its products are fp32.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from training_steps import OperatorCount, graphs_per_second, inference_graphs_per_second, recipe_benchmark, switched_rounds  # noqa: E402

from cft.files.atomic import atomic_write_json  # noqa: E402
from cft.nn.constants import FrozenValue  # noqa: E402

CACHED = FrozenValue.__call__
SETTINGS = {"kept": True, "recomputed": False}


def use_cache(on: bool) -> None:
    """`FrozenValue` as shipped (on) or computing its value at every call (off)."""
    FrozenValue.__call__ = CACHED if on else (lambda self, compute, *sources: compute())


def operators(model, batch, on: bool) -> dict[str, int]:
    """Operators of one training forward (with the task loss), its backward, and one inference pass."""
    use_cache(on)
    try:
        model(batch)  # computes what the setting keeps, outside the count
        with OperatorCount() as forward:
            loss = model.task_loss(model(batch), batch.y)
        with OperatorCount() as backward:
            loss.backward()
        model.zero_grad(set_to_none=True)
        model.eval()
        with torch.no_grad(), OperatorCount() as inference:
            model(batch)
        model.train()
        return {"training_forward": forward.count, "training_backward": backward.count, "inference": inference.count}
    finally:
        use_cache(True)


def main() -> None:
    args, model, optimizer, batches, result = recipe_benchmark(__doc__, "frozen_constants.py", "frozen_constants.json")
    runs = {"training": lambda: graphs_per_second(model, optimizer, batches), "inference": lambda: inference_graphs_per_second(model, batches)}
    result["operators"] = {name: operators(model, batches[0], on) for name, on in SETTINGS.items()}
    print(f"operators: {result['operators']}", flush=True)
    result |= switched_rounds(runs, use_cache, tuple(SETTINGS), args.rounds)
    atomic_write_json(args.json, result)


if __name__ == "__main__":
    main()
