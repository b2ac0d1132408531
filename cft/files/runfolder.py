"""A run folder: what `cft train` writes, and the rules that protect an existing one.

    recipe.yaml                resolved recipe (what --resume checks against)
    metrics.jsonl              one line per epoch
    summary.json               final result (the contract in docs/run-folder.md)
    bundle.safetensors         adapters, router, heads, prior + metadata
    backbone.safetensors       the backbone the bundle refers to
    checkpoint.pt              last checkpoint (torch.save, loaded with weights_only=True)
    routing_history.safetensors  task x adapter routes per epoch and layer
    skipped_smiles.csv         rows whose SMILES RDKit could not parse
    dropped_tasks.json         task columns left out because no row labels them
    splits.json                the split in chemprop's --splits-file format (input-row indices)
    split.csv                  row, smiles, split (train/val/test) per input row: chemprop's --splits-column
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
from pathlib import Path

import numpy as np
import torch
import yaml
from safetensors.torch import load_file

from cft.errors import CftError
from cft.files.atomic import atomic_write_text
from cft.files.backbone import read_backbone_header
from cft.files.stfile import write_safetensors
from cft.recipe.load import recipe_to_yaml
from cft.recipe.schema import Recipe

# settings that change where or how fast a run executes, not what it computes: a resume may change them
_EXECUTION_ONLY = {
    ("output_dir",), ("train", "device"), ("train", "num_workers"), ("train", "threads"), ("train", "dist_backend"), ("train", "deterministic"),
    ("train", "prefix_cache"), ("train", "tensorboard"), ("description",),
}
RUN_FILES = (
    "recipe.yaml", "metrics.jsonl", "summary.json", "bundle.safetensors", "backbone.safetensors",
    "backbone_start.safetensors", "checkpoint.pt", "routing_history.safetensors", "skipped_smiles.csv", "routing.png",
    "dropped_tasks.json", "splits.json", "split.csv",
)


class RunFolder:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._created_here = False

    def file(self, name: str) -> Path:
        return self.path / name

    @property
    def checkpoint(self) -> Path:
        return self.path / "checkpoint.pt"

    # ------------------------------------------------------------------ files written during a run

    def write_skipped(self, skipped: list[tuple[int, str]]) -> None:
        """skipped_smiles.csv: CSV row numbers (header = row 1) and SMILES RDKit could not parse."""
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["row", "smiles"])
        writer.writerows([row + 2, s] for row, s in skipped)
        atomic_write_text(self.file("skipped_smiles.csv"), buffer.getvalue())

    def write_dropped_tasks(self, dropped: dict[str, str]) -> None:
        """dropped_tasks.json: the task columns of the input left out of the run, each with its reason
        (no label in any row, or none in the training split)."""
        payload = {"count": len(dropped), "tasks": list(dropped), "reasons": dict(dropped)}
        atomic_write_text(self.file("dropped_tasks.json"), json.dumps(payload, indent=1) + "\n")

    def write_splits(self, splits: list[dict[str, list[int]]], column: list[tuple[int, str, str]]) -> None:
        """splits.json (chemprop's --splits-file format: a list with one {"train", "val", "test"}
        object of 0-based input-row indices) and split.csv (row, smiles, split for every input row,
        in input order: the column chemprop's --splits-column reads)."""
        atomic_write_text(self.file("splits.json"), json.dumps(splits) + "\n")
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["row", "smiles", "split"])
        writer.writerows(column)
        atomic_write_text(self.file("split.csv"), buffer.getvalue())

    def write_metrics(self, history: list[dict]) -> None:
        """metrics.jsonl: one JSON line per epoch so far."""
        atomic_write_text(self.file("metrics.jsonl"), "".join(json.dumps(r, default=float) + "\n" for r in history))

    def write_routing_history(self, epochs_done: int, routes: dict[int, np.ndarray], tasks: list[str]) -> None:
        """routing_history.safetensors: the task x adapter routes of every layer after each epoch
        (`epoch0001/layer0`, ...); entries of later epochs (left by an interrupted run) are dropped."""
        path = self.file("routing_history.safetensors")
        tensors = {}
        if path.exists():
            try:
                tensors = {k: v for k, v in load_file(str(path)).items() if int(k.split("/")[0][5:]) < epochs_done}
            except Exception:  # a damaged history is rewritten from this epoch on
                tensors = {}
        for layer, matrix in routes.items():
            tensors[f"epoch{epochs_done:04d}/layer{layer}"] = torch.from_numpy(np.ascontiguousarray(matrix))
        if tensors:
            write_safetensors(path, tensors, {"format": "cft-routing-history", "tasks": tasks})

    def is_run(self) -> bool:
        return (self.path / "recipe.yaml").exists()

    def check(self, recipe: Recipe, *, resume: bool, overwrite: bool) -> str:
        """Raise CftError unless the folder may be used as asked; returns new/replace/resume. Writes nothing."""
        path = self.path
        if path.exists() and not path.is_dir():
            raise CftError(f"Output path {path} is a file, not a folder.", hint="Choose another --output-dir.")
        occupied = self._occupied()
        if occupied and not self.is_run():
            raise CftError(
                f"Output folder {path} is not empty and does not hold a cft run; cft will not write into it.",
                hint="Choose another --output-dir (or an empty folder).",
            )
        if not occupied:
            return "new"
        if overwrite and not resume:
            return "replace"
        if resume:
            differences = self.recipe_differences(recipe)
            if differences:
                raise CftError(
                    f"Output folder {path} holds a run of a different recipe ({'; '.join(differences[:5])}); --resume continues only the same run.",
                    hint="Use the recipe it was started with, or --overwrite to replace it, or another --output-dir.",
                )
            return "resume"
        differences = self.recipe_differences(recipe)
        what = "a run of a different recipe" if differences else "a run of this recipe"
        raise CftError(
            f"Output folder {path} already holds {what}.",
            hint="Pass --resume to continue it, --overwrite to replace it, or choose another --output-dir.",
        )

    def prepare(self, recipe: Recipe, *, resume: bool, overwrite: bool) -> str:
        """Create the folder, or check that continuing/replacing the run there is what was asked.

        Returns check()'s mode. For "new" and "replace" nothing of value is in the folder any more,
        so `discard` may remove everything again if the run fails before it trains."""
        mode = self.check(recipe, resume=resume, overwrite=overwrite)
        existed = self.path.exists()
        if mode == "replace":
            self._clear()
        elif mode == "resume":
            self._remove_stale_temporaries()
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CftError(f"Cannot create output folder {self.path}: {exc.strerror or exc}.", hint="Choose a folder you can write to.") from None
        self._created_here = not existed
        atomic_write_text(self.file("recipe.yaml"), recipe_to_yaml(recipe))
        return mode

    def discard(self) -> None:
        """Undo `prepare` of a new run that failed before training: remove what cft wrote, and
        the folder itself when this run created it and nothing else is in it."""
        if not self.path.is_dir():
            return
        self._clear()
        if self._created_here:
            with contextlib.suppress(OSError):
                self.path.rmdir()

    def _occupied(self) -> bool:
        return self.path.is_dir() and any(self.path.iterdir())

    def _remove_stale_temporaries(self) -> None:
        """Temp files of writes that a crash (or SIGKILL) interrupted before their rename."""
        for stale in self.path.glob(".*.tmp"):
            with contextlib.suppress(OSError):
                stale.unlink()

    def recipe_differences(self, recipe: Recipe) -> list[str]:
        try:
            saved = yaml.safe_load(self.file("recipe.yaml").read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError):
            return ["its recipe.yaml is unreadable"]
        current = recipe.model_dump(mode="json")
        return [
            f"{'.'.join(p)}: {a!r} there, {b!r} now" for p, a, b in _diff(_with_defaults(saved), current)
            if p not in _EXECUTION_ONLY and not (p == ("backbone", "path") and self._holds_backbone_of(b))
        ]

    def _holds_backbone_of(self, path) -> bool:
        """Whether the copy of the starting backbone this run made when it started has the fingerprint
        of the backbone file at `path`: `backbone.path` then names the same weights from another
        place (a moved project, another checkout), and a resume continues on the copy either way."""
        if not isinstance(path, str):
            return False
        try:
            wanted = read_backbone_header(path).get("fingerprint")
            kept = [read_backbone_header(self.file(name)).get("fingerprint") for name in ("backbone.safetensors", "backbone_start.safetensors") if self.file(name).exists()]
        except (CftError, OSError, ValueError):
            return False
        return wanted is not None and wanted in kept

    def _clear(self) -> None:
        """Remove what cft wrote (only that: other files a user put there stay)."""
        for name in RUN_FILES:
            target = self.path / name
            if target.is_symlink() or target.is_file():
                target.unlink()
        self._remove_stale_temporaries()


def _with_defaults(saved: dict) -> dict:
    """A run folder's recipe with the fields it predates at their defaults: a field a later cft
    added defaults to what runs did before it existed, so an older run resumes. A recipe the schema
    no longer reads (a field removed or renamed) is compared as written, and differs."""
    try:
        return Recipe.model_validate(saved).model_dump(mode="json")
    except ValueError:  # pydantic's ValidationError
        return saved


def _diff(a, b, prefix: tuple = ()) -> list[tuple[tuple, object, object]]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in sorted(set(a) | set(b), key=str):
            out += _diff(a.get(key), b.get(key), prefix + (key,))
        return out
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        a, b = list(a), list(b)
    return [] if a == b else [(prefix, a, b)]
