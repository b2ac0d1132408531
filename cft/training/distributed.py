"""Process-group context for training: one process by default, torch.distributed under torchrun.

Every rank trains on its shard of each epoch's permutation (the same permutation on every
rank), gradients are averaged by DistributedDataParallel, predictions are gathered before
metrics are computed, and only rank 0 writes files.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as torch_dist
from torch.utils.data import DistributedSampler

from cft.console import set_quiet
from cft.errors import CftError


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
        """Round-robin share of this rank (evaluation: shards may differ in length by one)."""
        return indices[self.rank :: self.world_size] if self.enabled else indices

    def epoch_order(self, indices: np.ndarray, seed: int, epoch: int) -> np.ndarray:
        """This rank's training molecules for an epoch, in order.

        torch's DistributedSampler: the same seeded permutation on every rank (and on every
        restart), padded so that every rank runs the same number of steps."""
        sampler = DistributedSampler(range(len(indices)), num_replicas=self.world_size, rank=self.rank, shuffle=True, seed=seed)
        sampler.set_epoch(epoch)
        return indices[np.fromiter(iter(sampler), dtype=np.int64)]

    def all_reduce_sums(self, values: list[float], device: torch.device) -> list[float]:
        if not self.enabled:
            return values
        tensor = torch.tensor(values, dtype=torch.float64, device=device)
        torch_dist.all_reduce(tensor)
        return tensor.tolist()

    def gather_rows(self, local: np.ndarray, total: int, device: torch.device) -> np.ndarray:
        """Reassemble rows split round-robin (rank r holds rows r, r+world, ...) on every rank.

        Plain tensors through all_gather (shards padded to equal length), never pickled objects."""
        if not self.enabled:
            return local
        width = local.shape[1] if local.ndim == 2 else 1
        longest = -(-total // self.world_size)
        padded = torch.zeros((longest, width), dtype=torch.float32, device=device)
        padded[: len(local)] = torch.as_tensor(local, dtype=torch.float32, device=device).reshape(len(local), width)
        parts = [torch.empty_like(padded) for _ in range(self.world_size)]
        torch_dist.all_gather(parts, padded)
        out = np.empty((total, width), dtype=np.float32)
        for r, part in enumerate(parts):
            rows = np.arange(r, total, self.world_size)
            out[rows] = part[: len(rows)].cpu().numpy()
        return out.reshape((total,) + local.shape[1:])

    def main_first(self, action, device: torch.device):
        """Run `action` on rank 0 only, then let every rank know whether it failed.

        Without this a CftError on rank 0 (say, a refused output folder) would leave the other
        ranks waiting at the next collective until the process-group timeout."""

        failure = None
        result = None
        if self.is_main:
            try:
                result = action()
            except CftError as exc:
                failure = exc
        if self.broadcast_flag(failure is not None, device):
            if failure is not None:
                raise failure
            raise CftError("rank 0 stopped with an error (see its message above).")
        return result

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


def context_from_env(backend: str = "auto") -> DistContext:
    """Join the process group torchrun set up (WORLD_SIZE > 1), else a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return single()

    if not os.environ.get("MASTER_ADDR") or not os.environ.get("MASTER_PORT"):
        raise CftError(
            "WORLD_SIZE > 1 but no rendezvous endpoint (MASTER_ADDR/MASTER_PORT) is set.",
            hint="Launch with torchrun (e.g. torchrun --nproc_per_node=2 -m cft train RECIPE) or cft train --nproc 2.",
        )
    if backend == "auto":
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl" and not torch.cuda.is_available():
        raise CftError("train.dist_backend is nccl, which needs CUDA, and this machine has no CUDA device.", hint="Use gloo (or auto) on CPU.")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if backend == "nccl":
        if local_rank >= torch.cuda.device_count():
            raise CftError(f"Local rank {local_rank} has no GPU: this machine has {torch.cuda.device_count()}.", hint="Start at most one process per GPU.")
        torch.cuda.set_device(local_rank)
    if not torch_dist.is_initialized():
        torch_dist.init_process_group(backend=backend)
    ctx = DistContext(rank=torch_dist.get_rank(), world_size=torch_dist.get_world_size(), local_rank=local_rank, initialized_here=True)
    if not ctx.is_main:

        set_quiet(True)
    return ctx


def launch_local(nproc: int, argv: list[str], backend: str = "auto") -> None:
    """`cft train --nproc N ...`: start N ranks on this machine through torchrun (standalone)."""
    if backend == "nccl" and not torch.cuda.is_available():
        raise CftError("train.dist_backend is nccl, which needs CUDA, and this machine has no CUDA device.", hint="Use gloo (or auto) on CPU.")
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

def pick_device(requested: str, local_rank: int = 0) -> torch.device:
    if requested == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(requested)
    except RuntimeError:
        raise CftError(f"train.device {requested!r} is not a device (use auto, cpu, cuda or cuda:N).") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CftError(f"train.device is {requested!r} but CUDA is not available on this machine.", hint="Use --device cpu or auto.")
    return device
