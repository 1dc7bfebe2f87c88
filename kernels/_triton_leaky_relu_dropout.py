"""Triton kernels and launchers of the fused affine + leaky-ReLU + dropout
(:mod:`ssgan.kernels.leaky_relu_dropout` holds the op). Imported only by a call on the Triton
path (a CUDA tensor, or the interpreter), so ssgan imports and runs on the CPU without triton.

Tensors are viewed as (N, C, S) with S the product of the trailing dims. Two memory layouts run
natively: channels-first (plain contiguous) and channels-last (``torch.channels_last``, and every
2-D (N, C) tensor). The dropout random number of an element depends only on its row-major
logical index, so the layout never changes the mask. Backward reduces ``dscale``/``dshift`` per
channel in two deterministic stages: per-program partial sums, then a sum over programs.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from . import reference

BLOCK_ELEMENTS = 2048  # elements per program: big enough to hide latency, small for registers
MAX_CHANNEL_BLOCK = 256


@triton.jit
def _program_ids(num_b):
    """(pid_a, pid_b) of a 2-D tiling launched as a 1-D grid: grid axes 1 and 2 stop at 65535
    programs, axis 0 goes to 2**31 - 1."""
    pid = tl.program_id(0)
    return pid // num_b, pid % num_b


@triton.jit
def _tile(pid_a, pid_b, R, C, S, num_s_blocks, CHANNELS_LAST: tl.constexpr,
          BLOCK_A: tl.constexpr, BLOCK_B: tl.constexpr, GROUP: tl.constexpr):
    """Memory offsets, row-major logical indices, channel ids and bounds mask of one tile,
    and the offsets of the same elements in the other layout (the compiler drops them where
    they go unused).

    Channels-last tiles are (BLOCK_A, BLOCK_B); channels-first tiles are
    (BLOCK_A, BLOCK_B // GROUP, GROUP), whose last axis holds GROUP consecutive positions that
    one thread keeps together (what lets one Philox evaluation serve four elements)."""
    if CHANNELS_LAST:
        # tile rows are positions r = n*S + s, tile columns are channels; memory is r*C + c
        r = (pid_a * BLOCK_A + tl.arange(0, BLOCK_A))[:, None]
        c = (pid_b * BLOCK_B + tl.arange(0, BLOCK_B))[None, :]
        in_bounds = (r < R) & (c < C)
        offs = r * C + c
        logical = (r // S) * (C * S) + c * S + (r % S)
        swapped = logical
    else:
        # one batch item n per program; tile rows are channels, tile columns are positions
        n = pid_a // num_s_blocks
        c = (pid_b * BLOCK_A + tl.arange(0, BLOCK_A))[:, None, None]
        s = ((pid_a % num_s_blocks) * BLOCK_B
             + GROUP * tl.arange(0, BLOCK_B // GROUP)[None, :, None]
             + tl.arange(0, GROUP)[None, None, :])
        in_bounds = (c < C) & (s < S)
        offs = n * (C * S) + c * S + s
        logical = offs
        swapped = n * (C * S) + s * C + c
    return offs, logical, c, in_bounds, swapped


@triton.jit
def _dropout_uniform(seed_ptr, logical, pid_a, pid_b, C, S, num_s_blocks,
                     SHARED_PHILOX: tl.constexpr, CHANNELS_LAST: tl.constexpr,
                     BLOCK_A: tl.constexpr, BLOCK_B: tl.constexpr):
    """Uniform [0, 1) number of each logical index i: word i % 4 of Philox at counter i // 4
    (the twin in ``_philox`` reproduces it).

    ``SHARED_PHILOX`` (S % 4 == 0, so that the four logical neighbours of a group lie in one
    tile row or column): one Philox evaluation per group of four elements, its four words
    interleaved into place; Philox-4x32-10 is about 100 instructions, the bulk of the kernel.
    Otherwise: one evaluation per element, keeping the element's word."""
    seed = tl.load(seed_ptr)
    if SHARED_PHILOX:
        if CHANNELS_LAST:
            # groups run down the tile's rows (positions r = n*S + s), one column per channel
            r = pid_a * BLOCK_A + 4 * tl.arange(0, BLOCK_A // 4)[:, None]
            c = (pid_b * BLOCK_B + tl.arange(0, BLOCK_B))[None, :]
            counter = ((r // S) * (C * S) + c * S + r % S) // 4           # (BLOCK_A/4, BLOCK_B)
            r0, r1, r2, r3 = tl.randint4x(seed, counter)
            words = tl.join(tl.join(r0, r2), tl.join(r1, r3))  # words[..., j, i] = word 2j + i
            bits = tl.reshape(tl.permute(words, (0, 2, 3, 1)), (BLOCK_A, BLOCK_B))
        else:
            # a group is the tile's last axis, held by one thread. The counter is broadcast
            # over that axis before Philox, so the thread's four copies are one expression
            # that the compiler evaluates once; the lane selects then fold away
            n = pid_a // num_s_blocks
            c = (pid_b * BLOCK_A + tl.arange(0, BLOCK_A))[:, None, None]
            s = (pid_a % num_s_blocks) * BLOCK_B + 4 * tl.arange(0, BLOCK_B // 4)[None, :, None]
            counter = tl.broadcast_to((n * (C * S) + c * S + s) // 4, (BLOCK_A, BLOCK_B // 4, 4))
            r0, r1, r2, r3 = tl.randint4x(seed, counter)
            lane = tl.arange(0, 4)[None, None, :]
            bits = tl.where(lane == 0, r0, tl.where(lane == 1, r1, tl.where(lane == 2, r2, r3)))
    else:
        r0, r1, r2, r3 = tl.randint4x(seed, logical // 4)
        lane = logical % 4
        bits = tl.where(lane == 0, r0, tl.where(lane == 1, r1, tl.where(lane == 2, r2, r3)))
    return tl.uint_to_uniform_float(bits)


@triton.jit
def _affine(x, c, C, scale_ptr, shift_ptr, HAS_SCALE: tl.constexpr, HAS_SHIFT: tl.constexpr):
    """x * scale[c] + shift[c]. The vectors are loaded in ``c``'s shape (one value per tile
    channel) and then broadcast, not gathered once per element."""
    scale = 1.0
    z = x
    if HAS_SCALE:
        scale = tl.load(scale_ptr + c, mask=c < C, other=0.0).to(x.dtype)
        z = z * scale
    if HAS_SHIFT:
        z = z + tl.load(shift_ptr + c, mask=c < C, other=0.0).to(x.dtype)
    return z, scale


@triton.jit
def _slope_and_mask(v, z, seed_ptr, logical, pid_a, pid_b, C, S, num_s_blocks,
                    NEGATIVE_SLOPE: tl.constexpr, P: tl.constexpr, KEEP_SCALE: tl.constexpr,
                    HAS_DROPOUT: tl.constexpr, SHARED_PHILOX: tl.constexpr,
                    CHANNELS_LAST: tl.constexpr, BLOCK_A: tl.constexpr, BLOCK_B: tl.constexpr):
    """``v`` where ``z > 0``, else ``v`` times the slope, then the dropout mask and 1/(1-p):
    the forward passes v = z, the backward v = dy (the derivative is the same factor)."""
    out = tl.where(z > 0, v, v * NEGATIVE_SLOPE)
    if HAS_DROPOUT:
        keep = _dropout_uniform(seed_ptr, logical, pid_a, pid_b, C, S, num_s_blocks,
                                SHARED_PHILOX, CHANNELS_LAST, BLOCK_A, BLOCK_B) > P
        out = tl.where(keep, out * KEEP_SCALE, 0.0)
    return out


@triton.jit
def _forward_kernel(x_ptr, y_ptr, scale_ptr, shift_ptr, seed_ptr, R, C, S, num_s_blocks, num_b,
                    NEGATIVE_SLOPE: tl.constexpr, P: tl.constexpr, KEEP_SCALE: tl.constexpr,
                    HAS_SCALE: tl.constexpr, HAS_SHIFT: tl.constexpr, HAS_DROPOUT: tl.constexpr,
                    SHARED_PHILOX: tl.constexpr, CHANNELS_LAST: tl.constexpr,
                    SWAPPED: tl.constexpr, IS_FP64: tl.constexpr, BLOCK_A: tl.constexpr,
                    BLOCK_B: tl.constexpr, GROUP: tl.constexpr):
    pid_a, pid_b = _program_ids(num_b)
    offs, logical, c, in_bounds, swapped = _tile(pid_a, pid_b, R, C, S, num_s_blocks,
                                                 CHANNELS_LAST, BLOCK_A, BLOCK_B, GROUP)
    x = tl.load(x_ptr + offs, mask=in_bounds, other=0.0)
    x = x.to(tl.float64) if IS_FP64 else x.to(tl.float32)
    z, _ = _affine(x, c, C, scale_ptr, shift_ptr, HAS_SCALE, HAS_SHIFT)
    y = _slope_and_mask(z, z, seed_ptr, logical, pid_a, pid_b, C, S, num_s_blocks,
                        NEGATIVE_SLOPE, P, KEEP_SCALE, HAS_DROPOUT, SHARED_PHILOX,
                        CHANNELS_LAST, BLOCK_A, BLOCK_B)
    tl.store(y_ptr + (swapped if SWAPPED else offs), y.to(y_ptr.dtype.element_ty),
             mask=in_bounds)


@triton.jit
def _backward_kernel(dy_ptr, x_ptr, dx_ptr, scale_ptr, shift_ptr, seed_ptr,
                     dscale_partial_ptr, dshift_partial_ptr, R, C, S, num_s_blocks, num_b,
                     NEGATIVE_SLOPE: tl.constexpr, P: tl.constexpr, KEEP_SCALE: tl.constexpr,
                     HAS_SCALE: tl.constexpr, HAS_SHIFT: tl.constexpr, HAS_DROPOUT: tl.constexpr,
                     SHARED_PHILOX: tl.constexpr, AFFINE_GRADS: tl.constexpr,
                     CHANNELS_LAST: tl.constexpr, SWAPPED: tl.constexpr, IS_FP64: tl.constexpr,
                     BLOCK_A: tl.constexpr, BLOCK_B: tl.constexpr, GROUP: tl.constexpr):
    pid_a, pid_b = _program_ids(num_b)
    offs, logical, c, in_bounds, swapped = _tile(pid_a, pid_b, R, C, S, num_s_blocks,
                                                 CHANNELS_LAST, BLOCK_A, BLOCK_B, GROUP)
    x = tl.load(x_ptr + offs, mask=in_bounds, other=0.0)
    dy = tl.load(dy_ptr + (swapped if SWAPPED else offs), mask=in_bounds, other=0.0)
    x = x.to(tl.float64) if IS_FP64 else x.to(tl.float32)
    dy = dy.to(x.dtype)
    z, scale = _affine(x, c, C, scale_ptr, shift_ptr, HAS_SCALE, HAS_SHIFT)
    dz = _slope_and_mask(dy, z, seed_ptr, logical, pid_a, pid_b, C, S, num_s_blocks,
                         NEGATIVE_SLOPE, P, KEEP_SCALE, HAS_DROPOUT, SHARED_PHILOX,
                         CHANNELS_LAST, BLOCK_A, BLOCK_B)
    tl.store(dx_ptr + offs, (dz * scale).to(dx_ptr.dtype.element_ty), mask=in_bounds)
    if AFFINE_GRADS:
        # per-channel partial sums of this tile: stage one of a deterministic reduction
        if CHANNELS_LAST:
            chan = (pid_b * BLOCK_B + tl.arange(0, BLOCK_B))
            dscale_part = tl.sum(dz * x, axis=0)
            dshift_part = tl.sum(dz, axis=0)
        else:
            chan = (pid_b * BLOCK_A + tl.arange(0, BLOCK_A))
            dscale_part = tl.sum(tl.sum(dz * x, axis=2), axis=1)
            dshift_part = tl.sum(tl.sum(dz, axis=2), axis=1)
        tl.store(dscale_partial_ptr + pid_a * C + chan, dscale_part, mask=chan < C)
        tl.store(dshift_partial_ptr + pid_a * C + chan, dshift_part, mask=chan < C)


@dataclass(frozen=True)
class _Launch:
    """How a tensor maps onto the kernels' (N, C, S) tiles."""
    channels_last: bool
    R: int
    C: int
    S: int
    num_s_blocks: int
    block_a: int
    block_b: int
    grid_a: int   # programs along the rows of partial sums (positions / batch items)
    grid_b: int   # programs along the channels

    @staticmethod
    def plan(x: torch.Tensor) -> "_Launch":
        n = x.shape[0]
        c = x.shape[1] if x.dim() > 1 else 1
        s = x.numel() // max(1, n * c)
        channels_last = reference.is_channels_last(x)
        if channels_last:
            block_b = min(triton.next_power_of_2(c), MAX_CHANNEL_BLOCK)
            block_a = min(max(1, BLOCK_ELEMENTS // block_b), triton.next_power_of_2(n * s))
            grid_a, grid_b = triton.cdiv(n * s, block_a), triton.cdiv(c, block_b)
            num_s_blocks = 1
        else:
            block_b = min(triton.next_power_of_2(s), BLOCK_ELEMENTS)
            block_a = min(max(1, BLOCK_ELEMENTS // block_b), triton.next_power_of_2(c))
            num_s_blocks = triton.cdiv(s, block_b)
            grid_a, grid_b = n * num_s_blocks, triton.cdiv(c, block_a)
        return _Launch(channels_last, n * s, c, s, num_s_blocks, block_a, block_b, grid_a,
                       grid_b)

    @property
    def group(self) -> int:
        """Positions a channels-first tile keeps together in one thread (see ``_tile``)."""
        return 4 if self.block_b % 4 == 0 and not self.channels_last else 1

    def constexprs(self) -> dict:
        """The tiling's compile-time constants, shared by the forward and backward launches.
        ``SHARED_PHILOX``: every group of four logical neighbours lies in one tile row
        (channels-first) or column (channels-last), so one Philox evaluation serves four."""
        shared = self.S % 4 == 0 and (self.block_a % 4 == 0 if self.channels_last
                                      else self.group == 4)
        return dict(SHARED_PHILOX=shared, CHANNELS_LAST=self.channels_last,
                    BLOCK_A=self.block_a, BLOCK_B=self.block_b, GROUP=self.group)

    @property
    def grid(self) -> tuple[int]:
        return (self.grid_a * self.grid_b,)

    def args(self):
        return self.R, self.C, self.S, self.num_s_blocks, self.grid_b


def _fp_flags(x: torch.Tensor, negative_slope: float, p: float) -> dict:
    """The float parameters go in as compile-time constants: a float kernel argument is fp32,
    which would round them for fp64 inputs (constants take the tensor's precision)."""
    return dict(NEGATIVE_SLOPE=negative_slope, P=p, KEEP_SCALE=1.0 / (1.0 - p),
                HAS_DROPOUT=p > 0, IS_FP64=x.dtype == torch.float64)


def forward_triton(x: torch.Tensor, scale: torch.Tensor | None, shift: torch.Tensor | None,
                   seed: torch.Tensor, negative_slope: float, p: float,
                   swap_layout: bool) -> torch.Tensor:
    """y for x in a native layout (non-empty), in x's layout, or in the other native layout
    where ``swap_layout`` (4-D x)."""
    plan = _Launch.plan(x)
    y = reference.output_like(x, swap_layout)
    _forward_kernel[plan.grid](
        x, y, scale if scale is not None else x, shift if shift is not None else x, seed,
        *plan.args(), HAS_SCALE=scale is not None, HAS_SHIFT=shift is not None,
        SWAPPED=swap_layout, **plan.constexprs(), **_fp_flags(x, negative_slope, p))
    return y


def backward_triton(dy: torch.Tensor, x: torch.Tensor, scale: torch.Tensor | None,
                    shift: torch.Tensor | None, seed: torch.Tensor, negative_slope: float,
                    p: float, affine_grads: bool, swap_layout: bool
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dx, dscale, dshift) for x in a native layout, dx in x's layout and dy read in y's
    (the other native layout where ``swap_layout``); dscale/dshift empty without
    ``affine_grads`` or without scale/shift."""
    plan = _Launch.plan(x) if x.numel() else None
    dy = reference.native_layout(dy, (plan.channels_last != swap_layout) if plan else False)
    dx = torch.empty_like(x)
    channels = x.shape[1] if x.dim() > 1 else 1
    # rows of per-program partial sums, dscale's and dshift's in one buffer; every program
    # writes its row for every channel, so nothing needs zeroing
    partials = torch.empty(2, plan.grid_a if plan else 0, channels,
                           dtype=reference.compute_dtype(x.dtype), device=x.device) \
        if affine_grads else None
    if plan is not None:
        _backward_kernel[plan.grid](
            dy, x, dx, scale if scale is not None else x, shift if shift is not None else x,
            seed, partials[0] if affine_grads else x, partials[1] if affine_grads else x,
            *plan.args(),
            HAS_SCALE=scale is not None, HAS_SHIFT=shift is not None, AFFINE_GRADS=affine_grads,
            SWAPPED=swap_layout, **plan.constexprs(),
            **_fp_flags(x, negative_slope, p))
    # stage two of the reduction: a fixed-order sum over programs, so results are deterministic
    dscale = partials[0].sum(0).to(scale.dtype) if (affine_grads and scale is not None) \
        else x.new_empty(0)
    dshift = partials[1].sum(0).to(shift.dtype) if (affine_grads and shift is not None) \
        else x.new_empty(0)
    return dx, dscale, dshift
