"""What summing rows by `index_add_` saves: training steps and inference passes of a recipe's model
(by default recipes/tox21.yaml) with the GIN layers' message sums, the virtual node's pools and the
read-out computed by `cft.nn.aggregation` (`index_add_` on a CPU, as shipped) and by PyG's own
reduction (`scatter_add_` with the index broadcast to the rows' shape, the code before), side by
side in one process.

    python benchmarks/scatter_kernels.py [--recipe recipes/tox21.yaml] [--rounds 9] [--steps 30]
                                         [--batch-size N] [--threads 2] [--json benchmarks/results/scatter_kernels_tox21.json]

Each round times `--steps` training steps (forward, the recipe's loss, backward, AdamW, at the
frozen products' precision `train.frozen_bf16` resolves to on this CPU, as `cft train` runs them)
and then eval-mode forward passes without gradients over the same batches, per setting, the
settings in alternating order from round to round; the medians of the per-round ratios are
reported, with every round's pair. Before the rounds it counts the operators each setting
dispatches (torch's dispatch mode, below autograd) in one training step's forward and backward and
one inference pass, and checks that both settings give the same logits and gradients bit for bit.
The backbone is randomly initialised (the cost does not depend on its weights).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch_geometric.nn.aggr import Aggregation

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from training_steps import counted_step, graphs_per_second, inference_graphs_per_second, recipe_benchmark, switched_rounds  # noqa: E402

import cft.nn.aggregation as aggregation  # noqa: E402
from cft.files.atomic import atomic_write_json  # noqa: E402
from cft.recipe.load import load_recipe  # noqa: E402

INDEX_ADD = aggregation._IndexAddOnCpu.reduce
SETTINGS = {"index_add_": True, "scatter_add_": False}


def use_index_add(on: bool) -> None:
    """cft's aggregations with `index_add_` (on, as shipped) or with PyG's own reduction (off)."""
    aggregation._IndexAddOnCpu.reduce = INDEX_ADD if on else Aggregation.reduce


def one_step(model, batch, train, on: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, int]]:
    """`counted_step` (logits, gradients, operator counts of one training step) under the setting."""
    use_index_add(on)
    try:
        return counted_step(model, batch, train)
    finally:
        use_index_add(True)


def main() -> None:
    args, model, optimizer, batches, result = recipe_benchmark(__doc__, "scatter_kernels.py", "scatter_kernels_tox21.json")
    train = load_recipe(REPO / args.recipe).train
    with torch.no_grad():  # up-projections away from their zero start, as after some training
        for name, p in model.named_parameters():
            if p.requires_grad and name.endswith(".V"):
                p.normal_(0.0, 0.02)
    (logits, gradients, ops), (pyg_logits, pyg_gradients, pyg_ops) = (one_step(model, batches[0], train, on) for on in SETTINGS.values())
    result["operators"] = {"index_add_": ops, "scatter_add_": pyg_ops}
    result["logits_equal"] = bool(torch.equal(logits, pyg_logits))
    result["gradients_equal"] = all(torch.equal(gradients[n], g) for n, g in pyg_gradients.items())
    print(f"operators: {result['operators']}; logits equal: {result['logits_equal']}, gradients equal: {result['gradients_equal']}", flush=True)
    runs = {"training": lambda: graphs_per_second(model, optimizer, batches, train), "inference": lambda: inference_graphs_per_second(model, batches)}
    result |= switched_rounds(runs, use_index_add, tuple(SETTINGS), args.rounds)
    atomic_write_json(args.json, result)


if __name__ == "__main__":
    main()
