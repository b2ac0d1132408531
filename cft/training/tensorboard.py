"""TensorBoard event files in the run folder, when the `tensorboard` package is installed.

Per epoch (step = epoch number, 1-based): `loss/{total,task,reg}`, `valid/<metric>` (the mean),
`valid_task/<task>` (each scored task), `lr`, `routing/entropy/layer<L>` and the routing matrix of
each insertion layer as a greyscale image `routing/layer<L>` (rows tasks, columns adapters, white =
weight 1). Files go to `<run>/tensorboard/`; `tensorboard --logdir <run>` shows them.

A resumed run purges the events after the epoch it resumes from, so the curves have no duplicate
steps. Without the package (`pip install 'cft[tensorboard]'`) one line says how to enable it.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from rich.markup import escape

from cft.console import info
from cft.errors import CftError

FOLDER = "tensorboard"


def tensorboard_available() -> bool:
    return importlib.util.find_spec("tensorboard") is not None


class TensorBoardLog:
    """Writes one run's epoch records; a no-op object when disabled (so the trainer never branches)."""

    def __init__(self, run_dir: Path, setting: Optional[bool], resume_epoch: int = 0):
        """`setting`: None logs when the package is installed, True requires it, False turns logging off."""
        self.writer = None
        if setting is False:
            return
        if not tensorboard_available():
            if setting:
                raise CftError("train.tensorboard is true, but the tensorboard package is not installed.",
                               hint="pip install 'cft[tensorboard]' (or tensorboard), or set train.tensorboard: null to log only when it is installed.")
            info(escape("TensorBoard logs are off: pip install 'cft[tensorboard]' to write them to the run folder."))  # [..] is not markup
            return
        from torch.utils.tensorboard import SummaryWriter  # imports tensorboard: only when it is wanted

        # purge_step: events of epochs after the checkpoint (written before an interruption) are dropped
        self.writer = SummaryWriter(log_dir=str(Path(run_dir) / FOLDER), purge_step=resume_epoch + 1 if resume_epoch else None)

    def log_epoch(self, record: dict, metric: str, per_task: dict, routes: dict[int, np.ndarray]) -> None:
        """`record`: the epoch's metrics.jsonl row; `per_task`: {task: value or None}; `routes`: {layer: [T, K]}."""
        if self.writer is None:
            return
        step, w = record["epoch"], self.writer
        w.add_scalar("loss/total", record["loss"], step)
        w.add_scalar("loss/task", record["task_loss"], step)
        w.add_scalar("loss/reg", record["reg_loss"], step)
        w.add_scalar(f"valid/{metric}", record[f"valid_{metric}"], step)
        w.add_scalar("lr", record["lr"], step)
        for task, value in per_task.items():
            if value is not None:
                w.add_scalar(f"valid_task/{task}", value, step)
        for layer, stats in record.get("routing", {}).items():
            w.add_scalar(f"routing/entropy/layer{layer}", stats["entropy"], step)
        for layer, matrix in routes.items():
            image = torch.as_tensor(np.clip(matrix, 0.0, 1.0), dtype=torch.float32)
            w.add_image(f"routing/layer{layer}", image, step, dataformats="HW")
        w.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
