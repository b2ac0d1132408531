"""Trainable / total parameter counts of recipes/molpcba.yaml's model (128 tasks), as cft builds it.

Two modes, as in docs/distributed.md's H200 table: the recipe (adapters, frozen backbone) and full
fine-tuning (`backbone.freeze=false`, `adapters.enabled=false`). No data is read: the model's shape
depends only on the recipe and the number of tasks. Prints JSON; the committed output is
benchmarks/results/param_counts.json.

    python benchmarks/param_counts.py > benchmarks/results/param_counts.json
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from cft.nn.backbone import Backbone
from cft.nn.model import CftModel
from cft.recipe.load import load_recipe
from cft.spec import BackboneSpec
from cft.training.build import model_spec, set_trainable

REPO = Path(__file__).resolve().parents[1]
TASKS = 128


def counts(sets: list[str]) -> dict[str, int]:
    recipe = load_recipe(REPO / "recipes" / "molpcba.yaml", sets)
    dataset = SimpleNamespace(name="ogbg-molpcba", tasks=[f"task_{i}" for i in range(TASKS)], kinds=["binary"] * TASKS)
    backbone = Backbone(BackboneSpec.of(recipe.backbone))
    model = CftModel(backbone, model_spec(recipe, dataset, backbone.spec), [np.eye(TASKS, dtype=np.float32)], freeze_backbone=recipe.backbone.freeze)
    set_trainable(model, recipe)
    return model.parameter_counts()


if __name__ == "__main__":
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=False).stdout.strip()
    print(json.dumps({
        "commit": commit, "recipe": "recipes/molpcba.yaml", "tasks": TASKS,
        "adapters (frozen backbone)": counts([]),
        "full fine-tuning": counts(["backbone.freeze=false", "adapters.enabled=false"]),
    }, indent=2))
