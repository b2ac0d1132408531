"""Matrix products of frozen weights in bf16: the frozen backbone's big Linear layers, cheaper.

A frozen Linear y = x W^T + b needs, per training step, its forward product and (where an adapter
sits below it) the input gradient dL/dx = dL/dy W, never a weight gradient. Both products can run
in bf16 while everything else stays fp32:

    y = fp32( bf16(x) bf16(W)^T + bf16(b) ),    dL/dx = fp32( bf16(dL/dy) bf16(W) ),

products accumulated in fp32 inside the kernel; only their inputs (and the stored result) are
rounded to bf16's 8-bit mantissa. On a CPU with AMX tiles such a product runs several times faster
than in fp32 (oneDNN), on a GPU on its tensor cores. Unlike bf16 autocast, the rest of the step
(messages, sums, norms, adapters, heads, loss, optimiser) keeps fp32 values: nothing else is
rounded or converted.

oneDNN compiles a kernel per distinct matrix shape and keeps a bounded cache of them. Molecule
batches have a new node count N almost every step, so the rows are padded to a multiple of
`ROW_MULTIPLE` (zero rows, dropped from the result): a few dozen shapes instead of one per N.

`bf16_frozen_products("backward")` rounds only the second product: the forward pass stays fp32,

    y = x W^T + b,    dL/dx = fp32( bf16(dL/dy) bf16(W) ),

so the values, the loss and every score are those of fp32, and only the gradients that reach the
adapters below carry bf16's rounding (relative error ~2^-9 per element, far under a minibatch's
own noise). It runs the backward half of the products at bf16's speed.

A trained low-rank update B A beside a frozen Linear (a linear adapter bank, LoRA's form) is merged
into the weight for each step, `frozen_linear_low_rank`: y = x (W + B A)^T + b in one product
instead of x W^T + b and two narrow products, and dL/dx = dL/dy (W + B A) in one (in bf16 in
"backward" mode) instead of two; the merged weight is not kept between steps (B and A train).

The products are switched on for a block of code with `bf16_frozen_products(True)` (or
`"backward"`; a context manager, as `torch.autocast`); outside it `frozen_linear` is exactly
`F.linear`. Weights that require a gradient (a trained backbone) always take `F.linear`.
"""

from __future__ import annotations

import contextlib
import contextvars

import torch
import torch.nn.functional as F
from torch import nn

from cft.nn.constants import frozen_value

ROW_MULTIPLE = 32
"""Rows of every bf16 product are padded to a multiple of this (few kernel shapes; <= 31 zero rows)."""

BACKWARD = "backward"
"""`bf16_frozen_products(BACKWARD)`: only the input gradients' products in bf16, the forward in fp32."""

PRECISION_NAMES = {False: "fp32", True: "fp32, frozen products bf16", BACKWARD: "fp32, frozen products' input gradients bf16"}
"""What a training in fp32 with the frozen products in each `bf16_frozen_products` mode is called
(summary.json's `precision`, the benchmarks' tables)."""

_ENABLED = contextvars.ContextVar("cft_bf16_frozen_products", default=False)


@contextlib.contextmanager
def bf16_frozen_products(enabled: bool | str = True):
    """Within the block, `frozen_linear` of frozen weights runs in bf16 (see the module docstring):
    both products (True), the input gradients' only (`BACKWARD`, "backward"), or neither (False)."""
    if enabled not in (True, False, BACKWARD):
        raise ValueError(f"bf16_frozen_products: True, False or {BACKWARD!r}, got {enabled!r}")
    token = _ENABLED.set(enabled)
    try:
        yield
    finally:
        _ENABLED.reset(token)


def frozen_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, owner: nn.Module | None = None) -> torch.Tensor:
    """F.linear(x, weight, bias), x [N, in], weight [out, in], bias [out] -> [N, out]; in bf16
    products inside `bf16_frozen_products` when neither weight nor bias needs a gradient (the
    backward product only, inside `bf16_frozen_products(BACKWARD)`). `owner`: the module the
    weights belong to, which keeps their bf16 copies between calls while they stay unchanged
    (`cft.nn.constants.frozen_value`; None: converted at every call)."""
    frozen = not weight.requires_grad and (bias is None or not bias.requires_grad)
    mode = _ENABLED.get()
    if not (frozen and mode and x.dim() == 2 and x.dtype == torch.float32):
        return F.linear(x, weight, bias)
    if mode == BACKWARD and not x.requires_grad:  # nothing below needs dL/dx: the plain fp32 product
        return F.linear(x, weight, bias)
    sources = (weight,) if bias is None else (weight, bias)
    weight16, bias16 = _bf16_copies(weight, bias) if owner is None else frozen_value(owner, "bf16", lambda: _bf16_copies(weight, bias), *sources)
    if mode == BACKWARD:
        return _FrozenLinearBf16Backward.apply(x, weight, bias, weight16)
    return _FrozenLinearBf16.apply(x, weight16, bias16)


def _bf16_copies(weight: torch.Tensor, bias: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    return weight.to(torch.bfloat16), None if bias is None else bias.to(torch.bfloat16)


class _FrozenLinearBf16(torch.autograd.Function):
    """y = x W^T + b with bf16 products and fp32 x, y; backward gives dL/dx only (W, b are frozen)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight16: torch.Tensor, bias16: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(weight16)  # x is not kept: no weight gradient is ever computed
        return padded_bf16_product(x, weight16.t(), bias16)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        (weight16,) = ctx.saved_tensors
        grad_x = padded_bf16_product(grad_out, weight16) if ctx.needs_input_grad[0] else None
        return grad_x, None, None


class _FrozenLinearBf16Backward(torch.autograd.Function):
    """y = x W^T + b in fp32; backward dL/dx = fp32(bf16(dL/dy) bf16(W)) only (W, b are frozen)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, weight16: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(weight16)
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        (weight16,) = ctx.saved_tensors
        return padded_bf16_product(grad_out, weight16), None, None, None


def padded_bf16_product(a: torch.Tensor, b16: torch.Tensor, bias16: torch.Tensor | None = None) -> torch.Tensor:
    """fp32(bf16(a) b16 + bias16): a [N, k] (any float dtype), b16 [k, m] bf16, bias16 [m] bf16 or
    None -> [N, m] in a's dtype. `a` is rounded into a bf16 buffer of ceil(N / ROW_MULTIPLE) *
    ROW_MULTIPLE rows (the extra rows zero) in one copy, so the kernel sees few distinct shapes."""
    n = a.size(0)
    padded = -(-n // ROW_MULTIPLE) * ROW_MULTIPLE
    buffer = a.new_empty((padded, a.size(1)), dtype=torch.bfloat16)
    buffer[:n].copy_(a)
    buffer[n:].zero_()
    out = torch.addmm(bias16, buffer, b16) if bias16 is not None else buffer @ b16
    return out[:n].to(a.dtype)


def merges_low_rank(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """Whether `frozen_linear_low_rank` computes this frozen Linear with its update merged: its
    weights need no gradient, x is an fp32 matrix outside autocast, and the forward product is fp32
    (not inside `bf16_frozen_products(True)`, where a merged weight rounded to bf16 would lose an
    update much smaller than the weight itself)."""
    frozen = not weight.requires_grad and (bias is None or not bias.requires_grad)
    return (frozen and _ENABLED.get() is not True and x.dim() == 2 and x.dtype == torch.float32
            and not torch.is_autocast_enabled(x.device.type))


def frozen_linear_low_rank(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, down: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """A frozen Linear with a trained low-rank update merged into its weight, for one step:

        y = x W'^T + b,   W' = W + B A,
        dL/dx = dL/dy W',   dL/dA = (dL/dy B)^T x,   dL/dB = dL/dy^T (x A^T),

    x [N, in], W [out, in] and b [out] frozen (`merges_low_rank` must hold), A = `down` [P, in] and
    B = `up` [out, P] trained, -> [N, out]. The same values as x W^T + b + (x A^T) B^T within float
    rounding, with one [N, in] x [in, out] product forward instead of that and two narrow ones
    ([N, in] x [in, P], [N, P] x [P, out]); the merge is a [out, P] x [P, in] product that does not
    grow with N. The backward takes LoRA's four narrow products for A's and B's gradients and
    dL/dx in one product with W' (in bf16, fp32(bf16(dL/dy) bf16(W')), inside
    `bf16_frozen_products("backward")`) instead of two."""
    return _FrozenLinearLowRank.apply(x, weight, bias, down, up, _ENABLED.get() == BACKWARD and x.requires_grad)


class _FrozenLinearLowRank(torch.autograd.Function):
    """`frozen_linear_low_rank`: y = x (W + B A)^T + b; gradients for x, A and B (W, b are frozen)."""

    @staticmethod
    def forward(ctx, x, weight, bias, down, up, backward_bf16: bool):
        merged = torch.addmm(weight, up, down)  # W + B A, [out, in]
        ctx.save_for_backward(x, down, up, merged.to(torch.bfloat16) if backward_bf16 else merged)
        return F.linear(x, merged, bias)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        x, down, up, merged = ctx.saved_tensors
        needs_x, needs_down, needs_up = ctx.needs_input_grad[0], ctx.needs_input_grad[3], ctx.needs_input_grad[4]
        grad_x = grad_down = grad_up = None
        if needs_x:
            grad_x = padded_bf16_product(grad_out, merged) if merged.dtype == torch.bfloat16 else grad_out @ merged
        if needs_down:
            grad_down = (grad_out @ up).t() @ x
        if needs_up:
            grad_up = grad_out.t() @ (x @ down.t())
        return grad_x, None, None, grad_down, grad_up, None
