"""Process-group context for training: one process by default, torch.distributed under torchrun.

Every rank trains on its shard of each epoch's permutation (the same permutation on every
rank), gradients are averaged by DistributedDataParallel, predictions are gathered before
metrics are computed, and only rank 0 writes files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as torch_dist


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    initialized_here: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def shard(self, indices: np.ndarray) -> np.ndarray:
        return indices[self.rank :: self.world_size] if self.enabled else indices

    def barrier(self) -> None:
        if self.enabled:
            torch_dist.barrier()

    def all_reduce_sum(self, value: float, device: torch.device) -> float:
        if not self.enabled:
            return value
        tensor = torch.tensor([value], dtype=torch.float64, device=device)
        torch_dist.all_reduce(tensor)
        return float(tensor.item())

    def gather_rows(self, array: np.ndarray, order: np.ndarray, total: int) -> np.ndarray:
        """Reassemble per-rank rows (rank r holds rows order[r::world]) into the full array."""
        if not self.enabled:
            return array
        gathered: list = [None] * self.world_size
        torch_dist.all_gather_object(gathered, array)
        out = np.empty((total,) + array.shape[1:], dtype=array.dtype)
        for r, part in enumerate(gathered):
            out[order[r :: self.world_size]] = part
        return out

    def close(self) -> None:
        if self.initialized_here and torch_dist.is_initialized():
            torch_dist.destroy_process_group()

    def broadcast_flag(self, flag: bool, device: torch.device) -> bool:
        if not self.enabled:
            return flag
        tensor = torch.tensor([1 if flag else 0], device=device)
        torch_dist.all_reduce(tensor, op=torch_dist.ReduceOp.MAX)
        return bool(tensor.item())


def single() -> DistContext:
    return DistContext()


def context_from_env() -> DistContext:
    """Join the process group torchrun set up (WORLD_SIZE > 1), else a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return single()
    from cft.errors import CftError

    if not os.environ.get("MASTER_ADDR") or not os.environ.get("MASTER_PORT"):
        raise CftError(
            "WORLD_SIZE > 1 but no rendezvous endpoint (MASTER_ADDR/MASTER_PORT) is set.",
            hint="Launch with torchrun (e.g. torchrun --nproc_per_node=2 -m cft train RECIPE) or cft train --nproc 2.",
        )
    backend = os.environ.get("CFT_DIST_BACKEND") or ("nccl" if torch.cuda.is_available() else "gloo")
    if backend == "nccl" and not torch.cuda.is_available():
        raise CftError("CFT_DIST_BACKEND=nccl needs CUDA, which this machine does not have.", hint="Use gloo on CPU.")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    if not torch_dist.is_initialized():
        torch_dist.init_process_group(backend=backend)
    ctx = DistContext(rank=torch_dist.get_rank(), world_size=torch_dist.get_world_size(), local_rank=local_rank, initialized_here=True)
    if not ctx.is_main:
        from cft.console import set_quiet

        set_quiet(True)
    return ctx


def launch_local(nproc: int, argv: list[str]) -> None:
    """`cft train --nproc N ...`: start N ranks on this machine through torchrun (standalone)."""
    import subprocess
    import sys

    from cft.errors import CftError

    limit = torch.cuda.device_count() if torch.cuda.is_available() else (os.cpu_count() or 1)
    if nproc > limit:
        what = "GPUs" if torch.cuda.is_available() else "CPU cores"
        raise CftError(f"--nproc {nproc} asks for more processes than this machine has {what} ({limit}).", hint=f"Use --nproc {limit} or fewer.")
    args = _strip_nproc(argv)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m", "cft", *args]
    result = subprocess.run(command)
    if result.returncode != 0:
        raise SystemExit(result.returncode)


def _strip_nproc(argv: list[str]) -> list[str]:
    out, skip = [], False
    for i, arg in enumerate(argv):
        if skip:
            skip = False
            continue
        if arg == "--nproc":
            skip = True
            continue
        if arg.startswith("--nproc="):
            continue
        out.append(arg)
    return out
