"""What summing rows by `index_add_` saves: training steps and inference passes of a recipe's model
(by default recipes/tox21.yaml) with the GIN layers' message sums, the virtual node's pools and the
read-out computed by `cft.nn.aggregation` (`index_add_` on a CPU, as shipped) and by PyG's own
reduction (`scatter_add_` with the index broadcast to the rows' shape, the code before), side by
side in one process.

    python benchmarks/scatter_kernels.py [--recipe recipes/tox21.yaml] [--rounds 9] [--steps 30]
                                         [--batch-size N] [--threads 2] [--json benchmarks/results/scatter_kernels_tox21.json]

The protocol is `training_steps.compare_switched`'s (as benchmarks/merged_updates.py's): per
round `--steps` training steps at the recipe's precision, then eval-mode passes over the same
batches, the two settings in alternating order; operators dispatched per setting; here also
whether both settings give the same logits and gradients bit for bit.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch_geometric.nn.aggr import Aggregation

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from training_steps import compare_switched  # noqa: E402

import cft.nn.aggregation as aggregation  # noqa: E402

INDEX_ADD = aggregation._IndexAddOnCpu.reduce


def use_index_add(on: bool) -> None:
    """cft's aggregations with `index_add_` (on, as shipped) or with PyG's own reduction (off)."""
    aggregation._IndexAddOnCpu.reduce = INDEX_ADD if on else Aggregation.reduce


def equality(index_add: tuple, scatter_add: tuple) -> dict:
    """Whether the two steps' logits and gradients are the same bit for bit."""
    (logits, gradients), (pyg_logits, pyg_gradients) = index_add, scatter_add
    return {"logits_equal": bool(torch.equal(logits, pyg_logits)), "gradients_equal": all(torch.equal(gradients[n], g) for n, g in pyg_gradients.items())}


if __name__ == "__main__":
    compare_switched(__doc__, "scatter_kernels.py", "scatter_kernels_tox21.json", use_index_add, ("index_add_", "scatter_add_"), equality)
