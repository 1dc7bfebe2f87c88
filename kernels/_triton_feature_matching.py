"""Triton kernels and launchers of the feature-matching loss (:mod:`ssgan.kernels.feature_matching`
holds the op). Imported only by a call on the Triton path.

Forward is one program: the step's features are a few hundred rows of a few hundred columns,
too few to spread over programs, and one program sums in a fixed order (deterministic, no
atomics). It also writes the difference of the means, which is all the backward needs.
Backward is one elementwise launch over row blocks of both inputs: each row's gradient is the
same sign vector, scaled by its segment's 1/rows.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import reference

BLOCK_ROWS = 32
BLOCK_FEATURES = 128

# row counts differ from call to call and index nothing a divisibility hint would vectorize
SIZES = ["REAL", "FAKE", "REAL_BLOCKS"]


@triton.jit
def _column_mean(ptr, rows, stride, col, COLS: tl.constexpr, dtype: tl.constexpr,
                 BLOCK_R: tl.constexpr, BLOCK_F: tl.constexpr):
    acc = tl.zeros((BLOCK_F,), dtype)
    for start in range(0, rows, BLOCK_R):
        row = start + tl.arange(0, BLOCK_R)[:, None]
        tile = tl.load(ptr + row * stride + col[None, :],
                       mask=(row < rows) & (col[None, :] < COLS), other=0.0)
        acc += tl.sum(tile.to(dtype), axis=0)
    return acc / rows


@triton.jit(do_not_specialize=SIZES)
def _forward_kernel(real_ptr, fake_ptr, loss_ptr, diff_ptr, REAL, FAKE, real_stride,
                    fake_stride, COLS: tl.constexpr, IS_FP64: tl.constexpr,
                    BLOCK_R: tl.constexpr, BLOCK_F: tl.constexpr):
    dtype = tl.float64 if IS_FP64 else tl.float32
    total = tl.zeros((BLOCK_F,), dtype)
    for first in tl.static_range(0, COLS, BLOCK_F):
        col = first + tl.arange(0, BLOCK_F)
        diff = (_column_mean(real_ptr, REAL, real_stride, col, COLS, dtype, BLOCK_R, BLOCK_F)
                - _column_mean(fake_ptr, FAKE, fake_stride, col, COLS, dtype, BLOCK_R, BLOCK_F))
        tl.store(diff_ptr + col, diff, mask=col < COLS)
        total += tl.where(col < COLS, tl.abs(diff), 0.0)
    tl.store(loss_ptr, tl.sum(total, axis=0) / COLS)


@triton.jit(do_not_specialize=SIZES)
def _backward_kernel(diff_ptr, dloss_ptr, d_real_ptr, d_fake_ptr, REAL, FAKE, REAL_BLOCKS,
                     COLS: tl.constexpr, IS_FP64: tl.constexpr, BLOCK_R: tl.constexpr,
                     BLOCK_F: tl.constexpr):
    dtype = tl.float64 if IS_FP64 else tl.float32
    pid = tl.program_id(0)
    on_real = pid < REAL_BLOCKS
    rows = tl.where(on_real, REAL, FAKE)
    g = tl.load(dloss_ptr).to(dtype) / COLS
    scale = tl.where(on_real, g / REAL, -g / FAKE)
    row = (tl.where(on_real, pid, pid - REAL_BLOCKS) * BLOCK_R + tl.arange(0, BLOCK_R))[:, None]
    for first in tl.static_range(0, COLS, BLOCK_F):
        col = (first + tl.arange(0, BLOCK_F))[None, :]
        diff = tl.load(diff_ptr + col, mask=col < COLS, other=0.0)
        # d|t|/dt = sign(t), 0 at 0 as in torch.abs
        sign = tl.where(diff > 0, 1.0, tl.where(diff < 0, -1.0, 0.0))
        grad = tl.broadcast_to(sign * scale, (BLOCK_R, BLOCK_F))
        inside = (row < rows) & (col < COLS)
        if on_real:
            tl.store(d_real_ptr + row * COLS + col, grad.to(d_real_ptr.dtype.element_ty),
                     mask=inside)
        else:
            tl.store(d_fake_ptr + row * COLS + col, grad.to(d_fake_ptr.dtype.element_ty),
                     mask=inside)


def _constexprs(real: torch.Tensor) -> dict:
    cols = real.shape[1]
    return dict(COLS=cols, IS_FP64=real.dtype == torch.float64, BLOCK_R=BLOCK_ROWS,
                BLOCK_F=min(BLOCK_FEATURES, triton.next_power_of_2(cols)))


def forward_triton(real: torch.Tensor, fake: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss (), diff (F,)) in the compute dtype, for real (R, F) and fake (Q, F) whose rows
    are contiguous (any row stride)."""
    dtype = reference.compute_dtype(real.dtype)
    loss = torch.empty((), dtype=dtype, device=real.device)
    diff = torch.empty(real.shape[1], dtype=dtype, device=real.device)
    _forward_kernel[(1,)](real, fake, loss, diff, real.shape[0], fake.shape[0], real.stride(0),
                          fake.stride(0), **_constexprs(real))
    return loss, diff


def backward_triton(dloss: torch.Tensor, diff: torch.Tensor, real: torch.Tensor,
                    fake: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(d real, d fake), contiguous, in the inputs' dtype."""
    d_real, d_fake = (torch.empty(t.shape, dtype=t.dtype, device=t.device) for t in (real, fake))
    real_blocks = triton.cdiv(real.shape[0], BLOCK_ROWS)
    grid = (real_blocks + triton.cdiv(fake.shape[0], BLOCK_ROWS),)
    _backward_kernel[grid](diff, dloss, d_real, d_fake, real.shape[0], fake.shape[0],
                           real_blocks, **_constexprs(real))
    return d_real, d_fake
