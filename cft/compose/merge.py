"""Merging low-rank adapters into one, as PEFT's `add_weighted_adapter` does: pure tensor functions.
"""

from __future__ import annotations

import math

import torch

from cft.errors import CftError


def merge_layer(components: list[tuple[float, torch.Tensor, torch.Tensor]], mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """One adapter (U [R, d], V [d, R]) standing for the weighted components."""
    if mode == "cat":
        kept = [(c, u, v) for c, u, v in components if c != 0.0]
        if not kept:
            kept = components[:1]
            return torch.zeros_like(kept[0][1][:1]), torch.zeros_like(kept[0][2][:, :1])
        return torch.cat([u for _, u, _ in kept], dim=0), torch.cat([c * v for c, _, v in kept], dim=1)
    if mode == "linear":
        u = sum(math.sqrt(c) * u for c, u, _ in components)
        v = sum(math.sqrt(c) * v for c, _, v in components)
        return u, v
    if mode == "svd":
        delta = sum(c * (v @ u) for c, u, v in components)  # [d, d]
        rank = max(u.size(0) for _, u, _ in components)
        left, sing, right = torch.linalg.svd(delta.double(), full_matrices=False)
        return right[:rank].float().contiguous(), (left[:, :rank] * sing[:rank]).float().contiguous()
    raise CftError(f"unknown merge mode {mode!r}")
