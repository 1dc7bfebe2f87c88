"""Triton kernels and launchers of the masked cross-entropy
(:mod:`ssgan.kernels.masked_cross_entropy` holds the op). Imported only by a call on the
Triton path, so ssgan runs on the CPU without triton.

Forward is two launches: each program of the reduction kernel computes the weighted loss of a
block of rows (online log-sum-exp over the classes) and writes its partial loss, partial weight
and first out-of-range labeled row; one finishing program then sums the partials in a fixed
order (deterministic, no float atomics) and divides.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._triton_gan_logits import _blocks, _row_logsumexp


@triton.jit
def _forward_kernel(x_ptr, target_ptr, weight_ptr, lse_ptr, partial_loss_ptr,
                    partial_weight_ptr, partial_bad_ptr, B, C, stride_b, stride_c,
                    IS_FP64: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_C: tl.constexpr):
    pid = tl.program_id(0)
    rows = pid * BLOCK_B + tl.arange(0, BLOCK_B)
    row_ok = rows < B
    lse = _row_logsumexp(x_ptr, rows, row_ok, C, stride_b, stride_c, IS_FP64, BLOCK_B, BLOCK_C)
    weight = tl.load(weight_ptr + rows, mask=row_ok, other=0.0)
    labeled = row_ok & (weight != 0)
    target = tl.load(target_ptr + rows, mask=labeled, other=0)
    in_range = (target >= 0) & (target < C)
    # masked rows may hold any target (e.g. -1), and bad labeled ones are reported, not read
    readable = labeled & in_range
    target_logit = tl.load(x_ptr + rows * stride_b + target * stride_c, mask=readable, other=0.0)
    loss = tl.where(readable, weight * (lse - target_logit.to(lse.dtype)), 0.0)
    tl.store(lse_ptr + rows, lse, mask=row_ok)
    tl.store(partial_loss_ptr + pid, tl.sum(loss, axis=0))
    tl.store(partial_weight_ptr + pid, tl.sum(weight, axis=0))
    tl.store(partial_bad_ptr + pid, tl.min(tl.where(labeled & ~in_range, rows, B), axis=0))


@triton.jit
def _finish_kernel(partial_loss_ptr, partial_weight_ptr, partial_bad_ptr, loss_ptr, denom_ptr,
                   first_bad_ptr, num_partials, B, BLOCK: tl.constexpr):
    """Sums the partials in a fixed order: loss = sum(loss) / max(1, sum(weight))."""
    loss = tl.zeros([BLOCK], partial_loss_ptr.dtype.element_ty)
    weight = tl.zeros([BLOCK], partial_weight_ptr.dtype.element_ty)
    first_bad = tl.full([BLOCK], B, tl.int32)
    for start in range(0, num_partials, BLOCK):
        idx = start + tl.arange(0, BLOCK)
        ok = idx < num_partials
        loss += tl.load(partial_loss_ptr + idx, mask=ok, other=0.0)
        weight += tl.load(partial_weight_ptr + idx, mask=ok, other=0.0)
        first_bad = tl.minimum(first_bad, tl.load(partial_bad_ptr + idx, mask=ok, other=B))
    denom = tl.maximum(tl.sum(weight, axis=0), 1.0)
    tl.store(loss_ptr, tl.sum(loss, axis=0) / denom)
    tl.store(denom_ptr, denom)
    tl.store(first_bad_ptr, tl.min(first_bad, axis=0))


@triton.jit
def _backward_kernel(dloss_ptr, denom_ptr, x_ptr, target_ptr, weight_ptr, lse_ptr, dx_ptr,
                     B, C, stride_b, stride_c, IS_FP64: tl.constexpr, BLOCK_B: tl.constexpr,
                     BLOCK_C: tl.constexpr):
    acc_dtype = tl.float64 if IS_FP64 else tl.float32
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    row_ok = rows < B
    weight = tl.load(weight_ptr + rows, mask=row_ok, other=0.0).to(acc_dtype)
    labeled = row_ok & (weight != 0)
    target = tl.load(target_ptr + rows, mask=labeled, other=-1)
    row_scale = weight * (tl.load(dloss_ptr).to(acc_dtype) / tl.load(denom_ptr).to(acc_dtype))
    lse = tl.load(lse_ptr + rows, mask=row_ok, other=0.0)
    for c0 in range(0, C, BLOCK_C):
        cols = c0 + tl.arange(0, BLOCK_C)
        ok = row_ok[:, None] & (cols[None, :] < C)
        x = tl.load(x_ptr + rows[:, None] * stride_b + cols[None, :] * stride_c, mask=ok,
                    other=0.0).to(acc_dtype)
        one_hot = tl.where(cols[None, :] == target[:, None], 1.0, 0.0)
        dx = tl.where(labeled[:, None], row_scale[:, None] * (tl.exp(x - lse[:, None]) - one_hot),
                      0.0)
        tl.store(dx_ptr + rows[:, None] * C + cols[None, :], dx.to(dx_ptr.dtype.element_ty),
                 mask=ok)


def forward_triton(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, lse, denom, first_bad), as ``reference.masked_cross_entropy_forward``."""
    batch, num_classes = logits.shape
    block_b, block_c = _blocks(num_classes)
    num_programs = max(1, triton.cdiv(batch, block_b))
    new = lambda *shape, dtype=weight.dtype: torch.empty(shape, dtype=dtype, device=logits.device)
    partial_loss, partial_weight = new(num_programs), new(num_programs)
    partial_bad = new(num_programs, dtype=torch.int32)
    lse, loss, denom, first_bad = new(batch), new(), new(), new(1, dtype=torch.int32)
    _forward_kernel[(num_programs,)](
        logits, target, weight, lse, partial_loss, partial_weight, partial_bad, batch,
        num_classes, *logits.stride(), IS_FP64=logits.dtype == torch.float64, BLOCK_B=block_b,
        BLOCK_C=block_c)
    _finish_kernel[(1,)](partial_loss, partial_weight, partial_bad, loss, denom, first_bad,
                         num_programs, batch, BLOCK=min(1024, triton.next_power_of_2(num_programs)))
    return loss, lse, denom, first_bad


def backward_triton(dloss: torch.Tensor, denom: torch.Tensor, logits: torch.Tensor,
                    target: torch.Tensor, weight: torch.Tensor, lse: torch.Tensor
                    ) -> torch.Tensor:
    """dx (B, C), dense, in the logits' dtype (B > 0)."""
    batch, num_classes = logits.shape
    dx = torch.empty(batch, num_classes, dtype=logits.dtype, device=logits.device)
    block_b, block_c = _blocks(num_classes)
    _backward_kernel[(triton.cdiv(batch, block_b),)](
        dloss, denom, logits, target, weight, lse, dx, batch, num_classes, *logits.stride(),
        IS_FP64=logits.dtype == torch.float64, BLOCK_B=block_b, BLOCK_C=block_c)
    return dx
