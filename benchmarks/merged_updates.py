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

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from training_steps import compare_switched  # noqa: E402

import cft.nn.backbone as backbone_module  # noqa: E402

MERGES = backbone_module.merges_low_rank


def use_merge(on: bool) -> None:
    """The backbone's Linears with their banks' updates merged (on, as shipped) or computed apart (off)."""
    backbone_module.merges_low_rank = MERGES if on else (lambda *args: False)


def differences(merged: tuple, apart: tuple) -> dict:
    """How far the merged step's logits and gradients are from the apart step's, relative to their size."""
    (logits, gradients), (apart_logits, apart_gradients) = merged, apart
    return {"logits_max_relative_difference": float((logits - apart_logits).abs().max() / apart_logits.abs().max()),
            "gradients_max_relative_difference": max(float((gradients[n] - g).norm() / g.norm().clamp_min(1e-30)) for n, g in apart_gradients.items())}


if __name__ == "__main__":
    compare_switched(__doc__, "merged_updates.py", "merged_updates_tox21.json", use_merge, ("merged", "apart"), differences)
