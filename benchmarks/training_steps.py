"""A recipe's model, optimiser and training batches built in one process, and timed training
steps on them: what the in-process side-by-side benchmarks (readout_k1.py, narrow_banks.py) share.

The backbone is randomly initialised (a step's cost does not depend on its weights); no run
folder, checkpoint or validation: only forward, loss, backward and the optimiser's step.
"""

from __future__ import annotations

import time
from pathlib import Path

from cft.data.dataset import load_dataset
from cft.nn.backbone import Backbone
from cft.recipe.load import load_recipe
from cft.spec import BackboneSpec
from cft.training.build import build_training_model, set_trainable
from cft.training.optim import make_optimizer
from cft.training.prefix import StoreBatches


def training_setup(recipe_path: Path, data: Path, steps: int, batch_size: int | None = None, overrides: list[str] | None = None):
    """(model in training mode, its optimiser, `steps` training batches of `batch_size`, default
    the recipe's) for the recipe at `recipe_path` with `overrides` (`--set` items)."""
    recipe = load_recipe(recipe_path, overrides or [])
    dataset = load_dataset(recipe.data, data, recipe.seed)
    model, _ = build_training_model(recipe, dataset, Backbone(BackboneSpec.of(recipe.backbone)))
    set_trainable(model, recipe)
    optimizer = make_optimizer(model, recipe)
    size = batch_size or recipe.train.batch_size
    batches = list(StoreBatches(dataset.store, dataset.y, dataset.split["train"][: size * steps], size))  # IndexError ends it
    return model.train(), optimizer, batches


def graphs_per_second(model, optimizer, batches) -> float:
    """Training steps (forward, task loss, backward, optimiser step) over `batches`: graphs per second."""
    graphs = 0
    start = time.perf_counter()
    for batch in batches:
        loss = model.task_loss(model(batch), batch.y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        graphs += int(batch.num_graphs)
    return graphs / (time.perf_counter() - start)
