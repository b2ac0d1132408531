"""What merging a linear bank's update into the frozen Linear beside it saves: training steps and
inference passes of a recipe's model (by default recipes/tox21.yaml) with the update merged
(`cft.nn.frozen.frozen_linear_low_rank`, as shipped) and computed apart (the code before:
x W^T + b, then (x A^T) B^T added in place; `merges_low_rank` replaced here by one that always
says no), side by side in one process.

    python benchmarks/merged_updates.py [--recipe recipes/tox21.yaml] [--rounds 9] [--steps 30]
                                        [--batch-size N] [--threads 2] [--json benchmarks/results/merged_updates_tox21.json]

Each round times `--steps` training steps (forward, the recipe's loss, backward, AdamW, at the
frozen products' precision `train.frozen_bf16` resolves to on this CPU, as `cft train` runs them)
and then eval-mode forward passes without gradients over the same batches, per setting, the
settings in alternating order from round to round; the medians of the per-round ratios are
reported, with every round's pair. Before the rounds it counts the operators each setting
dispatches (torch's dispatch mode, below autograd) in one training step's forward and backward and
one inference pass, and the largest difference of the two settings' logits and gradients relative
to their size (float rounding only). The backbone is randomly initialised (the cost does not
depend on its weights) and its banks' up-projections set to small random values (zero, as
initialised, would make the two settings' values equal).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from training_steps import counted_step, graphs_per_second, inference_graphs_per_second, recipe_benchmark, switched_rounds  # noqa: E402

import cft.nn.backbone as backbone_module  # noqa: E402
from cft.files.atomic import atomic_write_json  # noqa: E402
from cft.recipe.load import load_recipe  # noqa: E402

MERGES = backbone_module.merges_low_rank
SETTINGS = {"merged": True, "apart": False}


def use_merge(on: bool) -> None:
    """The backbone's Linears with their banks' updates merged (on, as shipped) or computed apart (off)."""
    backbone_module.merges_low_rank = MERGES if on else (lambda *args: False)


def one_step(model, batch, train, on: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, int]]:
    """`counted_step` (logits, gradients, operator counts of one training step) under the setting."""
    use_merge(on)
    try:
        return counted_step(model, batch, train)
    finally:
        use_merge(True)


def main() -> None:
    args, model, optimizer, batches, result = recipe_benchmark(__doc__, "merged_updates.py", "merged_updates_tox21.json")
    train = load_recipe(REPO / args.recipe).train
    with torch.no_grad():  # up-projections away from their zero start, as after some training
        for name, p in model.named_parameters():
            if p.requires_grad and name.endswith(".V"):
                p.normal_(0.0, 0.02)
    (logits, gradients, merged_ops), (apart_logits, apart_gradients, apart_ops) = (one_step(model, batches[0], train, on) for on in SETTINGS.values())
    result["operators"] = {"merged": merged_ops, "apart": apart_ops}
    result["logits_max_relative_difference"] = float((logits - apart_logits).abs().max() / apart_logits.abs().max())
    result["gradients_max_relative_difference"] = max(float((gradients[n] - g).norm() / g.norm().clamp_min(1e-30)) for n, g in apart_gradients.items())
    print(f"operators: {result['operators']}; logits differ by {result['logits_max_relative_difference']:.1e}, "
          f"gradients by {result['gradients_max_relative_difference']:.1e} of their size", flush=True)
    runs = {"training": lambda: graphs_per_second(model, optimizer, batches, train), "inference": lambda: inference_graphs_per_second(model, batches)}
    result |= switched_rounds(runs, use_merge, tuple(SETTINGS), args.rounds)
    atomic_write_json(args.json, result)


if __name__ == "__main__":
    main()
