"""Values computed from frozen tensors, kept until those tensors change.

A frozen backbone has constants derived from its weights that are the same at every step: its
eval-mode BatchNorms folded into the Linears before them (`cft.nn.backbone._linear_then_norm`),
its bond encoders' tables of every bond-feature combination (`bond_embeddings`), a constant task
graph's normalisation (`cft.nn.graph`). Recomputing them costs operators every forward (on a CPU
their dispatch, a third of a frozen GIN-VN's forward operators; on a GPU as many kernel
launches) for the same numbers. `FrozenValue` computes such a value once and returns it again
while its source tensors stay as they were:

    value = compute()    if any source requires a gradient (a trained weight: every call),
                         or changed since the last call (written in place: its version counter;
                         moved: its storage), or none was computed yet;
            the last one otherwise.

Nothing is cached inside `torch.inference_mode` (its tensors cannot enter autograd later) or
while torch.compile traces (it sees the computation itself). Writes that torch itself hides from
the version counter, through a parameter's `.data` (`p.data.copy_(...)`), are not seen either:
cft never writes a frozen weight that way (`load_state_dict` and `torch.no_grad` copies are
seen); code that does must write in place through the parameter or load a fresh module.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

import torch
from torch import nn


def _identity(tensor: torch.Tensor) -> tuple:
    """What changes when a tensor's values may have: its storage, version counter, device, dtype, shape."""
    return (tensor.data_ptr(), tensor._version, tensor.device, tensor.dtype, tuple(tensor.shape))


class FrozenValue:
    """One value computed from frozen source tensors, recomputed only when one of them changes
    (see the module docstring)."""

    def __init__(self):
        self._key: tuple | None = None
        self._value: Any = None

    def __call__(self, compute: Callable[[], Any], *sources: torch.Tensor) -> Any:
        if any(s.requires_grad for s in sources) or torch.is_inference_mode_enabled() or torch.compiler.is_compiling():
            return compute()
        key = tuple(_identity(s) for s in sources)
        if self._key != key:
            with torch.no_grad():
                self._value = compute()
            self._key = key
        return self._value


# per module, per name; weak keys: a module's entries go with it (and a copied module starts empty)
_VALUES: weakref.WeakKeyDictionary[nn.Module, dict[str, FrozenValue]] = weakref.WeakKeyDictionary()


def frozen_value(owner: nn.Module, name: str, compute: Callable[[], Any], *sources: torch.Tensor) -> Any:
    """`FrozenValue` `name` of module `owner`: compute() of `sources`, kept while they are frozen
    and unchanged."""
    values = _VALUES.setdefault(owner, {})
    if name not in values:
        values[name] = FrozenValue()
    return values[name](compute, *sources)
