"""The run's checkpoint: model, optimiser, schedule, loop state, the best model so far, RNG state.

Written atomically at every epoch end (and on Ctrl-C at a batch boundary); read with
`torch.load(weights_only=True)`: only tensors and plain values, never arbitrary pickles.
"""

from __future__ import annotations

from pathlib import Path

import torch

from cft.errors import CftError
from cft.files.atomic import atomic_write_with
from cft.training.seeding import rng_state_tensors

CHECKPOINT_FORMAT = "cft-checkpoint-1"


def write_checkpoint(
    path: Path, model: torch.nn.Module, optimizer, scheduler, state: dict, best_state: dict[str, torch.Tensor], average: dict | None = None,
) -> None:
    """`average`: the weight average's state (`train.ema`), when the run keeps one."""
    payload = {
        "format": CHECKPOINT_FORMAT,
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "state": state,
        "best_state": best_state,
        "rng": rng_state_tensors(),
        **({"average": average} if average is not None else {}),
    }
    atomic_write_with(path, lambda tmp: torch.save(payload, tmp))


def read_checkpoint(path: Path) -> dict:
    """The payload of a checkpoint written by `write_checkpoint` (CftError when it is not one)."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"format {payload.get('format') if isinstance(payload, dict) else type(payload).__name__!r}")
        return payload
    except Exception as exc:  # torch.load raises many kinds (UnpicklingError, RuntimeError, EOFError, ...)
        raise CftError(
            f"Checkpoint {path} cannot be resumed from ({type(exc).__name__}: {str(exc)[:200]}).",
            hint="It is damaged or from another cft version; start again with --overwrite.",
        ) from None
