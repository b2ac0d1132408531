"""An exponential moving average (EMA) of the trainable weights, for `train.ema`.

After every optimiser step the averaged copy of each trainable tensor moves towards the weights:

    theta_ema <- decay * theta_ema + (1 - decay) * theta        (theta_ema starts at theta)

with torch's own EMA update (`torch.optim.swa_utils.get_ema_multi_avg_fn`, one foreach lerp over
the tensors). Only the trainable tensors are averaged: a frozen backbone's weights never move, so
averaging them would cost a pass over millions of values every step for nothing. The training
loop validates, selects and saves the averaged weights (`applied`), so the epoch chosen by
validation is an average over roughly the last 1 / (1 - decay) steps rather than the last step's
weights; the optimiser keeps training the raw weights.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch.optim.swa_utils import get_ema_multi_avg_fn


class WeightAverage:
    """EMA of `model`'s trainable parameters (those with requires_grad when it is made)."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
        self.names = [name for name, _ in named]
        self.params = [p for _, p in named]
        self.averaged = [p.detach().clone() for p in self.params]
        self.updates = 0
        self._update = get_ema_multi_avg_fn(decay)

    @torch.no_grad()
    def update(self) -> None:
        """One step of the average, after an optimiser step."""
        self._update(self.averaged, [p.detach() for p in self.params], self.updates)
        self.updates += 1

    @contextmanager
    def applied(self) -> Iterator[None]:
        """Inside: the model's trainable parameters hold the averaged values (for validation and a
        snapshot of the best weights); on leaving, the raw weights are put back."""
        raw = [p.detach().clone() for p in self.params]
        with torch.no_grad():
            torch._foreach_copy_([p.data for p in self.params], self.averaged)
        try:
            yield
        finally:
            with torch.no_grad():
                torch._foreach_copy_([p.data for p in self.params], raw)

    def state_dict(self) -> dict:
        """Tensors and plain values only (checkpoints are read with weights_only=True)."""
        return {"decay": self.decay, "updates": self.updates, "averaged": {n: a.detach().cpu() for n, a in zip(self.names, self.averaged)}}

    def load_state_dict(self, state: dict) -> None:
        missing = set(self.names) - set(state["averaged"])
        if missing or state["decay"] != self.decay:
            raise ValueError(f"a weight average of other weights or another decay ({state['decay']}; missing {sorted(missing)[:3]})")
        with torch.no_grad():
            for name, averaged in zip(self.names, self.averaged):
                averaged.copy_(state["averaged"][name])
        self.updates = int(state["updates"])
