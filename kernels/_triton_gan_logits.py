"""Triton kernels and launchers of the GAN logit head (:mod:`ssgan.kernels.gan_logits` holds
the op). Imported only by a call on the Triton path, so ssgan runs on the CPU without triton.

Each program owns a block of rows and streams over the class columns with an online
log-sum-exp (running max and rescaled sum), so any number of classes fits in registers and
logits of magnitude 1e4 never overflow.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import reference

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


def forward_triton(class_logits: torch.Tensor, extra_class: bool
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """(out, lse): out (B,) in the input's dtype, lse (B,) in the compute dtype."""
    batch, num_cols = class_logits.shape
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


def backward_triton(dout: torch.Tensor, class_logits: torch.Tensor, lse: torch.Tensor,
                    extra_class: bool) -> torch.Tensor:
    """d out / d class_logits times ``dout``, dense (B, K[+1]) in the input's dtype."""
    batch, num_cols = class_logits.shape
    dx = torch.empty(batch, num_cols, dtype=class_logits.dtype, device=class_logits.device)
    if batch:
        block_b, block_k = _blocks(num_cols)
        _backward_kernel[(triton.cdiv(batch, block_b),)](
            dout.contiguous(), class_logits, lse, dx, batch,
            num_cols - 1 if extra_class else num_cols, *class_logits.stride(),
            EXTRA_CLASS=extra_class, IS_FP64=class_logits.dtype == torch.float64,
            BLOCK_B=block_b, BLOCK_K=block_k)
    return dx
