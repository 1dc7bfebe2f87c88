"""Numerically stable GAN logit head: ``logsumexp(real class logits) - fake logit``.

Each program owns a block of rows and streams over the class columns with an online
log-sum-exp (running max and rescaled sum), so any number of classes fits in registers and
logits of magnitude 1e4 never overflow. Forward also stores the fp32 log-sum-exp of each row,
which makes backward a single elementwise pass: ``d/dz_j = g * softmax_j``, and ``-g`` for the
fake column.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import _checks, _inductor, _transforms, reference
from ._backend import backend_for, call_op

BLOCK_ELEMENTS = 2048
MAX_CLASS_BLOCK = 1024


@triton.jit
def _row_logsumexp(x_ptr, rows, row_ok, K, stride_b, stride_k, IS_FP64: tl.constexpr,
                   BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr):
    """Online log-sum-exp of columns [0, K) of a block of rows, in fp32 (fp64 for fp64)."""
    acc_dtype = tl.float64 if IS_FP64 else tl.float32
    running_max = tl.full([BLOCK_B], float("-inf"), acc_dtype)
    running_sum = tl.zeros([BLOCK_B], acc_dtype)
    for k0 in range(0, K, BLOCK_K):
        cols = k0 + tl.arange(0, BLOCK_K)
        ok = row_ok[:, None] & (cols[None, :] < K)
        x = tl.load(x_ptr + rows[:, None] * stride_b + cols[None, :] * stride_k, mask=ok,
                    other=float("-inf")).to(acc_dtype)
        new_max = tl.maximum(running_max, tl.max(x, axis=1))
        # a row that is -inf so far must not turn into (-inf) - (-inf) = nan
        safe_max = tl.where(new_max == float("-inf"), 0.0, new_max)
        running_sum = (running_sum * tl.exp(running_max - safe_max)
                       + tl.sum(tl.exp(x - safe_max[:, None]), axis=1))
        running_max = new_max
    return running_max + tl.log(running_sum)


@triton.jit
def _forward_kernel(x_ptr, out_ptr, lse_ptr, B, K, stride_b, stride_k,
                    EXTRA_CLASS: tl.constexpr, IS_FP64: tl.constexpr,
                    BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    row_ok = rows < B
    lse = _row_logsumexp(x_ptr, rows, row_ok, K, stride_b, stride_k, IS_FP64, BLOCK_B, BLOCK_K)
    out = lse
    if EXTRA_CLASS:
        fake = tl.load(x_ptr + rows * stride_b + K * stride_k, mask=row_ok, other=0.0)
        out = lse - fake.to(lse.dtype)
    tl.store(lse_ptr + rows, lse, mask=row_ok)
    tl.store(out_ptr + rows, out.to(out_ptr.dtype.element_ty), mask=row_ok)


@triton.jit
def _backward_kernel(dout_ptr, x_ptr, lse_ptr, dx_ptr, B, K, stride_b, stride_k,
                     EXTRA_CLASS: tl.constexpr, IS_FP64: tl.constexpr,
                     BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr):
    acc_dtype = tl.float64 if IS_FP64 else tl.float32
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    row_ok = rows < B
    g = tl.load(dout_ptr + rows, mask=row_ok, other=0.0).to(acc_dtype)
    lse = tl.load(lse_ptr + rows, mask=row_ok, other=0.0)
    num_cols = K + 1 if EXTRA_CLASS else K
    for k0 in range(0, num_cols, BLOCK_K):
        cols = k0 + tl.arange(0, BLOCK_K)
        ok = row_ok[:, None] & (cols[None, :] < num_cols)
        x = tl.load(x_ptr + rows[:, None] * stride_b + cols[None, :] * stride_k, mask=ok,
                    other=0.0).to(acc_dtype)
        dx = g[:, None] * tl.exp(x - lse[:, None])
        if EXTRA_CLASS:
            dx = tl.where(cols[None, :] == K, -g[:, None], dx)
        # dx is dense (B, K[+1]) whatever the strides of x
        tl.store(dx_ptr + rows[:, None] * num_cols + cols[None, :],
                 dx.to(dx_ptr.dtype.element_ty), mask=ok)


def _blocks(num_cols: int) -> tuple[int, int]:
    block_k = min(triton.next_power_of_2(num_cols), MAX_CLASS_BLOCK)
    return max(1, BLOCK_ELEMENTS // block_k), block_k


@torch.library.custom_op("ssgan::gan_logits_fwd", mutates_args=())
def _forward_op(class_logits: torch.Tensor, extra_class: bool,
                backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    batch, num_cols = class_logits.shape
    if backend == "inductor" and batch:
        return _inductor.call(reference.gan_logits_forward, class_logits, extra_class)
    real_cols = num_cols - 1 if extra_class else num_cols
    out = class_logits.new_empty(batch)
    lse = torch.empty(batch, dtype=reference.compute_dtype(class_logits.dtype),
                      device=class_logits.device)
    if batch:
        block_b, block_k = _blocks(real_cols)
        _forward_kernel[(triton.cdiv(batch, block_b),)](
            class_logits, out, lse, batch, real_cols, *class_logits.stride(),
            EXTRA_CLASS=extra_class, IS_FP64=class_logits.dtype == torch.float64,
            BLOCK_B=block_b, BLOCK_K=block_k)
    return out, lse


@_forward_op.register_fake
def _(class_logits, extra_class, backend):
    batch = class_logits.shape[0]
    return (class_logits.new_empty(batch),
            class_logits.new_empty(batch, dtype=reference.compute_dtype(class_logits.dtype)))


@torch.library.custom_op("ssgan::gan_logits_bwd", mutates_args=())
def _backward_op(dout: torch.Tensor, class_logits: torch.Tensor, lse: torch.Tensor,
                 extra_class: bool, backend: str) -> torch.Tensor:
    batch, num_cols = class_logits.shape
    if backend == "inductor" and batch:
        return _inductor.call(reference.gan_logits_backward, dout, class_logits, lse,
                              extra_class)
    dx = torch.empty(batch, num_cols, dtype=class_logits.dtype, device=class_logits.device)
    if batch:
        block_b, block_k = _blocks(num_cols)
        _backward_kernel[(triton.cdiv(batch, block_b),)](
            dout.contiguous(), class_logits, lse, dx, batch,
            num_cols - 1 if extra_class else num_cols, *class_logits.stride(),
            EXTRA_CLASS=extra_class, IS_FP64=class_logits.dtype == torch.float64,
            BLOCK_B=block_b, BLOCK_K=block_k)
    return dx


@_backward_op.register_fake
def _(dout, class_logits, lse, extra_class, backend):
    return class_logits.new_empty(class_logits.shape).contiguous()


class GanLogitsFunction(torch.autograd.Function):
    """Autograd for the head: returns (out, lse) and saves the logits and one fp32
    log-sum-exp per row (lse is not differentiable)."""

    @staticmethod
    def forward(class_logits, extra_class, backend):
        return call_op(_forward_op, class_logits, extra_class, backend)

    @staticmethod
    def setup_context(ctx, inputs, output):
        class_logits, ctx.extra_class, ctx.backend = inputs
        ctx.save_for_backward(class_logits, output[1])
        ctx.mark_non_differentiable(output[1])

    @staticmethod
    def backward(ctx, dout, _dlse):
        class_logits, lse = ctx.saved_tensors
        if _transforms.building_backward_graph():
            lse = reference.gan_logits_forward(class_logits, ctx.extra_class)[1]
            dx = reference.gan_logits_backward(dout, class_logits, lse, ctx.extra_class)
        else:
            dx = call_op(_backward_op, dout, class_logits, lse, ctx.extra_class, ctx.backend)
        return dx, None, None

    vmap = _transforms.vmap_refusal("gan_logits")


def gan_logits(class_logits: torch.Tensor, *, extra_class: bool = False) -> torch.Tensor:
    """GAN logit per row, such that ``sigmoid(result)`` is P(real | x).

    class_logits: (B, K) float tensor of real-class logits (the fake logit is fixed at 0), or,
    with ``extra_class=True``, (B, K+1) whose last column is the fake-class logit.
    Returns (B,) in class_logits' dtype: ``logsumexp(real logits) - fake logit``, computed with
    the max subtracted, in fp32 (fp64 for fp64). Any strides.
    """
    _checks.check_logits("class_logits", class_logits, min_cols=2 if extra_class else 1)
    backend = backend_for(class_logits)
    if backend == "torch":
        return reference.gan_logits(class_logits, extra_class=extra_class)
    _transforms.check_no_tangents("gan_logits", class_logits)
    if not _checks.int32_addressable(class_logits):
        class_logits = class_logits.contiguous()  # its element count fits, so its copy does
    return GanLogitsFunction.apply(class_logits, bool(extra_class), backend)[0]
