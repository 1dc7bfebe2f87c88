"""Triton kernels and launchers of the GAN loss head (:mod:`ssgan.kernels.gan_loss_head` holds
the op). Imported only by a call on the Triton path.

Forward is one program that walks every row of the concatenated logits in blocks, keeping
per-row partial sums in registers, and writes the six outputs: the step's logits are a few
hundred rows of about ten columns, far too few to spread over programs, and one program sums
in a fixed order (deterministic, no atomics). Backward is one elementwise launch over row
blocks: each row's gradient needs only its own logits and the six output gradients.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import reference

BLOCK_ROWS = 64


@triton.jit
def _softplus(t):
    return tl.maximum(t, 0.0) + tl.log(1.0 + tl.exp(-tl.abs(t)))


@triton.jit
def _row_terms(z_ptr, row, col, rows, COLS: tl.constexpr, EXTRA_CLASS: tl.constexpr,
               IS_FP64: tl.constexpr):
    """One block of rows: logits z (-inf outside), each row's log-sum-exp over the real
    columns and over all columns, its GAN logit, and which columns are real classes."""
    # rows past the end read zeros, columns past the end -inf: every row stays finite
    z = tl.load(z_ptr + row * COLS + col, mask=(row < rows) & (col < COLS), other=0.0)
    z = z.to(tl.float64) if IS_FP64 else z.to(tl.float32)
    z = tl.where(col < COLS, z, -float("inf"))
    k = COLS - 1 if EXTRA_CLASS else COLS
    is_real_col = col < k
    z_k = tl.where(is_real_col, z, -float("inf"))
    max_k = tl.max(z_k, axis=1)
    lse_k = max_k + tl.log(tl.sum(tl.exp(z_k - max_k[:, None]), axis=1))
    max_all = tl.max(z, axis=1)
    lse_all = max_all + tl.log(tl.sum(tl.exp(z - max_all[:, None]), axis=1))
    if EXTRA_CLASS:
        gan = lse_k - tl.sum(tl.where(col == COLS - 1, z, 0.0), axis=1)
    else:
        gan = lse_k
    return z, lse_k, lse_all, gan, is_real_col


# row counts and segment bounds differ from call to call and index nothing that a
# divisibility hint would vectorize: specializing on them would only multiply the binaries
SIZES = ["rows", "REAL", "FAKE", "SUP_START", "SUP_ROWS"]


@triton.jit(do_not_specialize=SIZES)
def _forward_kernel(z_ptr, target_ptr, weight_ptr, out_ptr, bad_ptr, rows, REAL, FAKE,
                    SUP_START, SUP_ROWS, COLS: tl.constexpr, EXTRA_CLASS: tl.constexpr,
                    IS_FP64: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr):
    dtype = tl.float64 if IS_FP64 else tl.float32
    col = tl.arange(0, BLOCK_K)[None, :]
    acc_ce = tl.zeros((BLOCK_R,), dtype)
    acc_w = tl.zeros((BLOCK_R,), dtype)
    acc_real = tl.zeros((BLOCK_R,), dtype)
    acc_fake = tl.zeros((BLOCK_R,), dtype)
    acc_entropy = tl.zeros((BLOCK_R,), dtype)
    acc_hits = tl.zeros((BLOCK_R,), dtype)
    first_bad = tl.full((BLOCK_R,), SUP_ROWS, tl.int32)
    for r0 in range(0, rows, BLOCK_R):
        r = r0 + tl.arange(0, BLOCK_R)
        z, lse_k, lse_all, gan, is_real_col = _row_terms(z_ptr, r[:, None], col, rows, COLS,
                                                         EXTRA_CLASS, IS_FP64)
        real = r < REAL
        fake = (r >= REAL) & (r < REAL + FAKE)
        acc_real += tl.where(real, _softplus(-gan), 0.0)
        acc_fake += tl.where(fake, _softplus(gan), 0.0)
        log_p = tl.where(is_real_col, z - lse_k[:, None], 0.0)
        acc_entropy += tl.where(real, -tl.sum(tl.exp(log_p) * log_p, axis=1), 0.0)
        # the supervised segment: row r is its row r - SUP_START
        s = r - SUP_START
        sup = (s >= 0) & (s < SUP_ROWS)
        t = tl.load(target_ptr + s, mask=sup, other=0)
        w = tl.load(weight_ptr + s, mask=sup, other=0.0).to(dtype)
        labeled = w != 0
        bad = labeled & ((t < 0) | (t >= COLS))
        first_bad = tl.minimum(first_bad, tl.where(bad, s, SUP_ROWS))
        z_t = tl.sum(tl.where(col == t[:, None], z, 0.0), axis=1)
        acc_ce += tl.where(labeled & ~bad, w * (lse_all - z_t), 0.0)
        acc_w += w
        pred = tl.argmax(tl.where(is_real_col, z, -float("inf")), axis=1)
        acc_hits += tl.where(labeled & (pred == t), 1.0, 0.0)
    labeled_weight = tl.sum(acc_w, axis=0)
    tl.store(out_ptr + 0, tl.sum(acc_ce, axis=0) / tl.maximum(labeled_weight, 1.0))
    tl.store(out_ptr + 1, tl.sum(acc_real, axis=0) / REAL)
    tl.store(out_ptr + 2, tl.sum(acc_fake, axis=0) / FAKE)
    tl.store(out_ptr + 3, tl.sum(acc_entropy, axis=0) / REAL)
    tl.store(out_ptr + 4, tl.sum(acc_hits, axis=0))
    tl.store(out_ptr + 5, labeled_weight)
    tl.store(bad_ptr, tl.min(first_bad, axis=0))


@triton.jit(do_not_specialize=SIZES)
def _backward_kernel(z_ptr, target_ptr, weight_ptr, out_ptr, dout_ptr, dz_ptr, rows, REAL,
                     FAKE, SUP_START, SUP_ROWS, COLS: tl.constexpr, EXTRA_CLASS: tl.constexpr,
                     IS_FP64: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr):
    dtype = tl.float64 if IS_FP64 else tl.float32
    r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    col = tl.arange(0, BLOCK_K)[None, :]
    z, lse_k, lse_all, gan, is_real_col = _row_terms(z_ptr, r[:, None], col, rows, COLS,
                                                     EXTRA_CLASS, IS_FP64)
    g_ce = tl.load(dout_ptr + 0).to(dtype)
    g_real = tl.load(dout_ptr + 1).to(dtype)
    g_fake = tl.load(dout_ptr + 2).to(dtype)
    g_entropy = tl.load(dout_ptr + 3).to(dtype)
    denom = tl.maximum(tl.load(out_ptr + 5).to(dtype), 1.0)
    real = r < REAL
    fake = (r >= REAL) & (r < REAL + FAKE)
    dgan = (tl.where(real, -(1.0 / (1.0 + tl.exp(gan))), 0.0) * (g_real / REAL)
            + tl.where(fake, 1.0 / (1.0 + tl.exp(-gan)), 0.0) * (g_fake / FAKE))
    log_p = tl.where(is_real_col, z - lse_k[:, None], 0.0)
    p_k = tl.where(is_real_col, tl.exp(log_p), 0.0)
    h = -tl.sum(p_k * log_p, axis=1)
    dz = dgan[:, None] * p_k
    dz += tl.where(real[:, None], -p_k * (log_p + h[:, None]), 0.0) * (g_entropy / REAL)
    if EXTRA_CLASS:
        dz = tl.where(col == COLS - 1, -dgan[:, None], dz)
    s = r - SUP_START
    sup = (s >= 0) & (s < SUP_ROWS)
    t = tl.load(target_ptr + s, mask=sup, other=0)
    w = tl.load(weight_ptr + s, mask=sup, other=0.0).to(dtype)
    t = tl.where((w != 0) & (t >= 0) & (t < COLS), t, 0)
    row_w = w * (g_ce / denom)
    softmax = tl.exp(z - lse_all[:, None])
    dce = row_w[:, None] * (softmax - tl.where(col == t[:, None], 1.0, 0.0))
    dz += tl.where(row_w[:, None] != 0, dce, 0.0)
    inside = (r[:, None] < rows) & (col < COLS)
    tl.store(dz_ptr + r[:, None] * COLS + col, dz.to(dz_ptr.dtype.element_ty), mask=inside)


def _shape_args(logits: torch.Tensor, target: torch.Tensor, segments: tuple[int, ...]):
    start = segments[0] + segments[1] if len(segments) == 3 else 0
    return logits.shape[0], segments[0], segments[1], start, target.shape[0]


def _constexprs(logits: torch.Tensor, extra_class: bool) -> dict:
    return dict(COLS=logits.shape[1], EXTRA_CLASS=extra_class,
                IS_FP64=logits.dtype == torch.float64, BLOCK_R=BLOCK_ROWS,
                BLOCK_K=triton.next_power_of_2(logits.shape[1]))


def forward_triton(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor,
                   segments: tuple[int, ...], extra_class: bool
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """(out (6,), first_bad) for contiguous logits (B, K[+1])."""
    out = torch.empty(6, dtype=reference.compute_dtype(logits.dtype), device=logits.device)
    first_bad = torch.empty((), dtype=torch.int32, device=logits.device)
    _forward_kernel[(1,)](logits, target, weight, out, first_bad,
                          *_shape_args(logits, target, segments),
                          **_constexprs(logits, extra_class))
    return out, first_bad


def backward_triton(dout: torch.Tensor, out: torch.Tensor, logits: torch.Tensor,
                    target: torch.Tensor, weight: torch.Tensor, segments: tuple[int, ...],
                    extra_class: bool) -> torch.Tensor:
    """d class_logits (B, K[+1]), contiguous, in the logits' dtype."""
    dz = torch.empty_like(logits)
    _backward_kernel[(triton.cdiv(logits.shape[0], BLOCK_ROWS),)](
        logits, target, weight, out, dout, dz, *_shape_args(logits, target, segments),
        **_constexprs(logits, extra_class))
    return dz
