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

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import cft.nn.adapters as adapters  # noqa: E402
from cft.data.dataset import load_dataset  # noqa: E402
from cft.nn.backbone import Backbone  # noqa: E402
from cft.recipe.load import load_recipe  # noqa: E402
from cft.spec import BackboneSpec  # noqa: E402
from cft.training.build import build_training_model, set_trainable  # noqa: E402
from cft.training.optim import make_optimizer  # noqa: E402
from cft.training.prefix import StoreBatches  # noqa: E402

PADDED = adapters.MIN_PRODUCT_WIDTH
SETTINGS = {f"padded to {PADDED}": PADDED, "unpadded": 1}


def training_setup(recipe_path: Path, data: Path, steps: int):
    """The recipe's model (random backbone), its optimiser, `steps` training batches and the widths
    of its banks."""
    recipe = load_recipe(recipe_path)
    dataset = load_dataset(recipe.data, data, recipe.seed)
    model, _ = build_training_model(recipe, dataset, Backbone(BackboneSpec.of(recipe.backbone)))
    set_trainable(model, recipe)
    optimizer = make_optimizer(model, recipe)
    size = recipe.train.batch_size
    batches = list(StoreBatches(dataset.store, dataset.y, dataset.split["train"][: size * steps], size))
    widths = sorted({m.num_adapters * m.rank for m in model.modules() if isinstance(m, adapters.AdapterBank)})
    return model.train(), optimizer, batches, widths


def graphs_per_second(model, optimizer, batches, width: int) -> float:
    adapters.MIN_PRODUCT_WIDTH = width
    graphs = 0
    start = time.perf_counter()
    for batch in batches:
        loss = model.task_loss(model(batch), batch.y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        graphs += int(batch.num_graphs)
    return graphs / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--recipe", default="recipes/tox21.yaml")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "narrow_banks.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from provenance import machine

    model, optimizer, batches, widths = training_setup(REPO / args.recipe, args.data.resolve(), args.steps)
    if min(widths) >= PADDED:
        raise SystemExit(f"{args.recipe}: every bank is at least {PADDED} units wide ({widths}): nothing to measure")
    for width in SETTINGS.values():  # warm-up of both settings
        graphs_per_second(model, optimizer, batches[:5], width)
    rounds = []
    for r in range(args.rounds):
        order = list(SETTINGS.items()) if r % 2 == 0 else list(reversed(SETTINGS.items()))
        pair = {name: graphs_per_second(model, optimizer, batches, width) for name, width in order}
        pair["ratio"] = pair[f"padded to {PADDED}"] / pair["unpadded"]
        rounds.append(pair)
        print(f"round {r + 1}: " + ", ".join(f"{name} {pair[name]:.0f} graphs/s" for name in SETTINGS) + f", ratio {pair['ratio']:.3f}", flush=True)
    adapters.MIN_PRODUCT_WIDTH = PADDED
    command = f"python benchmarks/narrow_banks.py --recipe {args.recipe} --rounds {args.rounds} --steps {args.steps} --threads {args.threads}"
    result = {"machine": machine() | {"torch_threads": args.threads}, "command": command, "recipe": args.recipe, "bank_widths": widths,
              "batch_size": len(batches[0].y), "steps": args.steps, "rounds": rounds,
              "median_ratio": statistics.median(p["ratio"] for p in rounds),
              "median_graphs_per_second": {name: statistics.median(p[name] for p in rounds) for name in SETTINGS}}
    print(f"median ratio padded / unpadded: {result['median_ratio']:.3f}")
    with tempfile.NamedTemporaryFile("w", dir=args.json.parent, suffix=".tmp", delete=False) as tmp:
        json.dump(result, tmp, indent=2)
    Path(tmp.name).replace(args.json)


if __name__ == "__main__":
    main()
