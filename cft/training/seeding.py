"""Seeds and RNG state: runs are deterministic on CPU, and resumable to the same bits.
"""

from __future__ import annotations

import os
import random

import numpy as np
import torch
import torch.utils.deterministic  # the fill setting (use_deterministic_kernels)


def use_deterministic_kernels(enabled: bool) -> None:
    """torch's deterministic kernels (`torch.use_deterministic_algorithms`), so that two runs of one
    recipe with one seed give the same bits where torch has a non-deterministic kernel (mostly on
    CUDA). On a CPU two runs at one thread are identical (tests/training/test_determinism.py); at two
    threads they agree on most runs, but one in about twenty was seen to differ in the last bits
    with AVX2 kernels under load, with these kernels on. `warn_only`: an op with no deterministic
    kernel (some CUDA ones) warns instead of failing; cuBLAS needs a fixed workspace for deterministic GEMMs.

    torch's deterministic mode also fills every new uninitialised tensor (`torch.empty` and the
    outputs of most ops) with NaN by default, a pass over memory that every op then overwrites
    (measured on 2 CPU cores: a validation pass of the Tox21 recipe at batch 256 took 13% longer
    with it; training steps at batch 64 about the same). No cft op reads memory it did not write,
    so the fill is switched off: torch's documented choice for such programs, whose kernels stay
    deterministic (tests/training/test_determinism.py)."""
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(enabled, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = not enabled


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def rng_state_tensors() -> dict[str, torch.Tensor]:
    """RNG state as plain tensors (checkpoints load with weights_only=True)."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    out = {
        "torch": torch.get_rng_state(),
        "numpy_keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
        "numpy_pos": torch.tensor([int(np_state[2]), int(np_state[3])], dtype=torch.int64),
        "numpy_gauss": torch.tensor([float(np_state[4])], dtype=torch.float64),
        "python": torch.tensor(list(py_state[1]), dtype=torch.int64),
        "python_version": torch.tensor([int(py_state[0])], dtype=torch.int64),
    }
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            out[f"cuda{i}"] = s
    return out


def restore_rng_state(state: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(
        ("MT19937", state["numpy_keys"].numpy().astype(np.uint32), int(state["numpy_pos"][0]), int(state["numpy_pos"][1]), float(state["numpy_gauss"][0]))
    )
    random.setstate((int(state["python_version"][0]), tuple(int(v) for v in state["python"].tolist()), None))
    if torch.cuda.is_available():
        cuda = [state[k] for k in sorted(k for k in state if k.startswith("cuda"))]
        if cuda:
            torch.cuda.set_rng_state_all(cuda)
