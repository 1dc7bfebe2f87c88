"""Triton kernels and launchers of the batch-norm block with per-segment statistics
(:mod:`ssgan.kernels.batch_norm_leaky_relu_dropout` holds the op). Imported only by a call on
the Triton path.

Two launches each way. Forward: ``_statistics_kernel``, then ``_forward_kernel`` (normalise,
affine, leaky ReLU, dropout). Backward: ``_reduction_kernel`` (per (segment, channel) sums of
dz and dz * xhat, and the weight and bias gradients), then ``_backward_kernel`` (dx).

The two reductions run one program per (block of channels, slice of each segment's values),
so that a GPU is filled however few the channels: each program writes its slices' partial
results, and the last program of a channel block to finish (an arrival counter) combines them
in slice order, so the result does not depend on which finished last. The statistics are
stable when the mean dwarfs the spread: a slice's mean is a mean of differences from its first
value, its centred sum of squares is taken about that mean, and the slices combine by Chan's
formula. The elementwise kernels tile x exactly as :mod:`._triton_leaky_relu_dropout` does and
share its Philox draw, so a seed gives the same mask as ``leaky_relu_dropout``; the reduction
kernel draws one Philox word per element instead.
"""
from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from . import reference
from ._triton_leaky_relu_dropout import (_Launch, _fp_flags, _program_ids, _slope_and_mask,
                                         _tile)

BLOCK_ROWS = 128      # positions per step of the reduction loops
BLOCK_CHANNELS = 32   # channels per reduction program
TILES_PER_SLICE = 4   # BLOCK_ROWS steps a reduction program takes at least, per segment
MAX_SLICES = 128      # slices per channel block: enough programs to fill the largest GPUs


@triton.jit
def _segment(n, B1, B2, B3):
    """The segment of row ``n`` (scalar or tensor) for segment ends B1 <= B2 <= B3 (unused
    ends equal N)."""
    return (n >= B1).to(tl.int32) + (n >= B2).to(tl.int32) + (n >= B3).to(tl.int32)


@triton.jit
def _segment_range(seg, B1, B2, B3, N):
    """First and end row of segment ``seg`` (0 to 3)."""
    start = tl.where(seg == 0, 0, tl.where(seg == 1, B1, tl.where(seg == 2, B2, B3)))
    end = tl.where(seg == 0, B1, tl.where(seg == 1, B2, tl.where(seg == 2, B3, N)))
    return start, end


@triton.jit
def _reduction_tile(j, start, count, c, C, S, CHANNELS_LAST: tl.constexpr):
    """Memory offsets, row-major logical indices and bounds of positions j (the j-th value of a
    segment starting at row ``start``, ``count`` values per channel) of channels c, and their
    offsets in the other layout."""
    n = start + j // S
    s = j % S
    logical = n * (C * S) + c * S + s
    cl = (n * S + s) * C + c
    offs = cl if CHANNELS_LAST else logical
    swapped = logical if CHANNELS_LAST else cl
    return offs, logical, (j < count) & (c < C), swapped


# the segments' count and ends and the batch size change with the recipe and the shard, and
# only select a segment: specializing on them (divisibility by 16, == 1, or a constexpr
# segment count) would multiply the binaries for nothing. C and S stay specialized: they form
# the addresses.
SEGMENT_ENDS = ["B1", "B2", "B3", "num_segments"]


@triton.jit
def _slice(seg, split, splits, B1, B2, B3, N, S, BLOCK_R: tl.constexpr):
    """Segment ``seg``'s first row and number of values per channel, and the first and end
    value of its slice ``split`` of ``splits`` (whole BLOCK_R steps each; the last slices of a
    short segment are empty)."""
    start, end = _segment_range(seg, B1, B2, B3, N)
    count = (end - start) * S
    chunk = tl.cdiv(tl.cdiv(count, splits), BLOCK_R) * BLOCK_R
    lo = tl.minimum(split * chunk, count)
    return start, count, lo, tl.minimum(lo + chunk, count)


@triton.jit
def _last_to_arrive(counter_ptr, splits):
    """True in the last of a channel block's ``splits`` programs to get here, once the others'
    partial results are visible; that program puts the counter back to 0 for the next
    launch."""
    tl.debug_barrier()  # every thread's stores of this program precede the release below
    last = tl.atomic_add(counter_ptr + tl.program_id(0), 1, sem="acq_rel") == splits - 1
    if last:
        tl.atomic_xchg(counter_ptr + tl.program_id(0), 0)
    return last


@triton.jit(do_not_specialize=SEGMENT_ENDS + ["N", "splits"])
def _statistics_kernel(x_ptr, partial_ptr, counter_ptr, stats_ptr, rmean_ptr, rvar_ptr, B1, B2,
                       B3, N, C, S, splits, momentum, EPS: tl.constexpr, num_segments,
                       TRACK: tl.constexpr, CHANNELS_LAST: tl.constexpr,
                       IS_FP64: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    chan = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    c = chan[None, :]
    split = tl.program_id(1)
    dtype = tl.float64 if IS_FP64 else tl.float32
    for seg in range(0, num_segments):
        start, count, lo, hi = _slice(seg, split, splits, B1, B2, B3, N, S, BLOCK_R)
        # the slice's mean of differences from its first value: with |mean| >> std they are
        # small and exact, where plain sums of x would round at |x|'s scale
        first = _reduction_tile(tl.zeros((1, 1), tl.int32) + lo, start, hi, c, C, S,
                                CHANNELS_LAST)
        pivot = tl.load(x_ptr + first[0], mask=first[2], other=0.0).to(dtype)
        total = tl.zeros((BLOCK_R, BLOCK_C), dtype)
        for j0 in range(lo, hi, BLOCK_R):
            offs, _, inside, _ = _reduction_tile(j0 + tl.arange(0, BLOCK_R)[:, None], start,
                                                 hi, c, C, S, CHANNELS_LAST)
            total += tl.where(inside, tl.load(x_ptr + offs, mask=inside, other=0.0).to(dtype)
                              - pivot, 0.0)
        mean = tl.sum(pivot, axis=0) + tl.sum(total, axis=0) / tl.maximum(hi - lo, 1)
        centred = tl.zeros((BLOCK_R, BLOCK_C), dtype)
        for j0 in range(lo, hi, BLOCK_R):
            offs, _, inside, _ = _reduction_tile(j0 + tl.arange(0, BLOCK_R)[:, None], start,
                                                 hi, c, C, S, CHANNELS_LAST)
            d = tl.where(inside, tl.load(x_ptr + offs, mask=inside, other=0.0).to(dtype)
                         - mean[None, :], 0.0)
            centred += d * d
        at = (split * 2 * num_segments + seg) * C + chan
        tl.store(partial_ptr + at, mean, mask=chan < C)
        tl.store(partial_ptr + at + num_segments * C, tl.sum(centred, axis=0), mask=chan < C)
    if _last_to_arrive(counter_ptr, splits):
        for seg in range(0, num_segments):
            mean = tl.zeros((BLOCK_C,), dtype)
            m2 = tl.zeros((BLOCK_C,), dtype)
            count = _slice(seg, 0, splits, B1, B2, B3, N, S, BLOCK_R)[1]
            for i in range(0, splits):
                # Chan's update: the values so far (lo of them) with the slice's hi - lo
                _, _, lo, hi = _slice(seg, i, splits, B1, B2, B3, N, S, BLOCK_R)
                at = (i * 2 * num_segments + seg) * C + chan
                slice_mean = tl.load(partial_ptr + at, mask=(chan < C) & (hi > lo), other=0.0,
                                     cache_modifier=".cg")
                slice_m2 = tl.load(partial_ptr + at + num_segments * C,
                                   mask=(chan < C) & (hi > lo), other=0.0, cache_modifier=".cg")
                weight = (hi - lo).to(dtype) / tl.maximum(hi, 1).to(dtype)
                delta = slice_mean - mean
                mean += delta * weight
                m2 += slice_m2 + delta * delta * lo.to(dtype) * weight
            var = m2 / count
            rstd = 1.0 / tl.sqrt(var + EPS)
            tl.store(stats_ptr + seg * C + chan, mean, mask=chan < C)
            tl.store(stats_ptr + (num_segments + seg) * C + chan, rstd, mask=chan < C)
            if TRACK:
                if seg == 0:
                    # ATen's update: the running variance moves towards the unbiased estimate
                    rmean = tl.load(rmean_ptr + chan, mask=chan < C, other=0.0)
                    rvar = tl.load(rvar_ptr + chan, mask=chan < C, other=0.0)
                    unbiased = var * count / tl.maximum(count - 1, 1)
                    tl.store(rmean_ptr + chan, (rmean + momentum * (mean - rmean)).to(
                        rmean_ptr.dtype.element_ty), mask=chan < C)
                    tl.store(rvar_ptr + chan, (rvar + momentum * (unbiased - rvar)).to(
                        rvar_ptr.dtype.element_ty), mask=chan < C)


@triton.jit
def _normalized(x, seg, c, C, inside, stats_ptr, w_ptr, b_ptr, num_segments):
    """(x - mean) * (weight * rstd) + bias with segment ``seg``'s statistics: (z, scale, xhat,
    the (segment, channel) offsets), in x's (compute) dtype. Loads only where ``inside``: a
    row past the end has no segment."""
    at = seg * C + c
    mean = tl.load(stats_ptr + at, mask=inside, other=0.0).to(x.dtype)
    rstd = tl.load(stats_ptr + num_segments * C + at, mask=inside, other=0.0).to(x.dtype)
    scale = rstd * tl.load(w_ptr + c, mask=c < C, other=0.0).to(x.dtype)
    xhat = (x - mean) * rstd
    z = (x - mean) * scale + tl.load(b_ptr + c, mask=c < C, other=0.0).to(x.dtype)
    return z, scale, xhat, at


@triton.jit
def _segment_of_tile(pid_a, offs, C, S, num_s_blocks, B1, B2, B3, CHANNELS_LAST: tl.constexpr):
    """The segment of each tile element's row: one scalar per program when channels-first
    (a program holds one batch row), one per element when channels-last."""
    if CHANNELS_LAST:
        row = offs // (C * S)
    else:
        row = pid_a // num_s_blocks
    return _segment(row, B1, B2, B3)


@triton.jit
def _normalized_tile(x_ptr, stats_ptr, w_ptr, b_ptr, B1, B2, B3, R, C, S, num_s_blocks, num_b,
                     num_segments, CHANNELS_LAST: tl.constexpr, IS_FP64: tl.constexpr,
                     BLOCK_A: tl.constexpr, BLOCK_B: tl.constexpr, GROUP: tl.constexpr):
    """The elementwise kernels' common start: this program's tile of x (as
    ``leaky_relu_dropout`` tiles it), loaded in the compute dtype and normalised with its rows'
    segment statistics. Returns (pid_a, pid_b, offs, logical, in_bounds, x, z, scale, xhat,
    the (segment, channel) offsets, the tile's offsets in the other layout)."""
    pid_a, pid_b = _program_ids(num_b)
    offs, logical, c, in_bounds, swapped = _tile(pid_a, pid_b, R, C, S, num_s_blocks,
                                                 CHANNELS_LAST, BLOCK_A, BLOCK_B, GROUP)
    x = tl.load(x_ptr + offs, mask=in_bounds, other=0.0)
    x = x.to(tl.float64) if IS_FP64 else x.to(tl.float32)
    seg = _segment_of_tile(pid_a, offs, C, S, num_s_blocks, B1, B2, B3, CHANNELS_LAST)
    z, scale, xhat, at = _normalized(x, seg, c, C, in_bounds, stats_ptr, w_ptr, b_ptr,
                                     num_segments)
    return pid_a, pid_b, offs, logical, in_bounds, x, z, scale, xhat, at, swapped


@triton.jit(do_not_specialize=SEGMENT_ENDS)
def _forward_kernel(x_ptr, y_ptr, stats_ptr, w_ptr, b_ptr, seed_ptr, B1, B2, B3, R, C, S,
                    num_s_blocks, num_b, num_segments,
                    NEGATIVE_SLOPE: tl.constexpr, P: tl.constexpr, KEEP_SCALE: tl.constexpr,
                    HAS_DROPOUT: tl.constexpr, SHARED_PHILOX: tl.constexpr,
                    CHANNELS_LAST: tl.constexpr, SWAPPED: tl.constexpr, IS_FP64: tl.constexpr,
                    BLOCK_A: tl.constexpr, BLOCK_B: tl.constexpr, GROUP: tl.constexpr):
    pid_a, pid_b, offs, logical, in_bounds, x, z, _, _, _, swapped = _normalized_tile(
        x_ptr, stats_ptr, w_ptr, b_ptr, B1, B2, B3, R, C, S, num_s_blocks, num_b, num_segments,
        CHANNELS_LAST, IS_FP64, BLOCK_A, BLOCK_B, GROUP)
    y = _slope_and_mask(z, z, seed_ptr, logical, pid_a, pid_b, C, S, num_s_blocks,
                        NEGATIVE_SLOPE, P, KEEP_SCALE, HAS_DROPOUT, SHARED_PHILOX,
                        CHANNELS_LAST, BLOCK_A, BLOCK_B)
    tl.store(y_ptr + (swapped if SWAPPED else offs), y.to(y_ptr.dtype.element_ty),
             mask=in_bounds)


@triton.jit(do_not_specialize=SEGMENT_ENDS + ["N", "splits"])
def _reduction_kernel(dy_ptr, x_ptr, stats_ptr, w_ptr, b_ptr, seed_ptr, partial_ptr, counter_ptr,
                      sums_ptr, dw_ptr, db_ptr, B1, B2, B3, N, C, S, splits, num_segments,
                      NEGATIVE_SLOPE: tl.constexpr, P: tl.constexpr, KEEP_SCALE: tl.constexpr,
                      HAS_DROPOUT: tl.constexpr, CHANNELS_LAST: tl.constexpr,
                      SWAPPED: tl.constexpr, IS_FP64: tl.constexpr, BLOCK_R: tl.constexpr,
                      BLOCK_C: tl.constexpr):
    chan = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    c = chan[None, :]
    split = tl.program_id(1)
    dtype = tl.float64 if IS_FP64 else tl.float32
    for seg in range(0, num_segments):
        start, count, lo, hi = _slice(seg, split, splits, B1, B2, B3, N, S, BLOCK_R)
        sum_dz = tl.zeros((BLOCK_R, BLOCK_C), dtype)
        sum_dz_xhat = tl.zeros((BLOCK_R, BLOCK_C), dtype)
        for j0 in range(lo, hi, BLOCK_R):
            offs, logical, inside, swapped = _reduction_tile(
                j0 + tl.arange(0, BLOCK_R)[:, None], start, hi, c, C, S, CHANNELS_LAST)
            x = tl.load(x_ptr + offs, mask=inside, other=0.0).to(dtype)
            dy = tl.load(dy_ptr + (swapped if SWAPPED else offs), mask=inside,
                         other=0.0).to(dtype)
            z, _, xhat, _ = _normalized(x, seg, c, C, inside, stats_ptr, w_ptr, b_ptr,
                                        num_segments)
            # one Philox word per element (logical index i: word i % 4 at counter i // 4)
            dz = _slope_and_mask(dy, z, seed_ptr, logical, 0, 0, C, S, 1, NEGATIVE_SLOPE, P,
                                 KEEP_SCALE, HAS_DROPOUT, False, CHANNELS_LAST, BLOCK_R, BLOCK_C)
            dz = tl.where(inside, dz, 0.0)
            sum_dz += dz
            sum_dz_xhat += dz * xhat
        at = (split * 2 * num_segments + seg) * C + chan
        tl.store(partial_ptr + at, tl.sum(sum_dz, axis=0), mask=chan < C)
        tl.store(partial_ptr + at + num_segments * C, tl.sum(sum_dz_xhat, axis=0),
                 mask=chan < C)
    if _last_to_arrive(counter_ptr, splits):
        dweight = tl.zeros((BLOCK_C,), dtype)
        dbias = tl.zeros((BLOCK_C,), dtype)
        for seg in range(0, num_segments):
            seg_dz = tl.zeros((BLOCK_C,), dtype)
            seg_dz_xhat = tl.zeros((BLOCK_C,), dtype)
            for i in range(0, splits):
                at = (i * 2 * num_segments + seg) * C + chan
                seg_dz += tl.load(partial_ptr + at, mask=chan < C, other=0.0,
                                  cache_modifier=".cg")
                seg_dz_xhat += tl.load(partial_ptr + at + num_segments * C, mask=chan < C,
                                       other=0.0, cache_modifier=".cg")
            count = _slice(seg, 0, splits, B1, B2, B3, N, S, BLOCK_R)[1]
            # the backward's per-segment means, which the elementwise pass subtracts
            tl.store(sums_ptr + seg * C + chan, seg_dz / count, mask=chan < C)
            tl.store(sums_ptr + (num_segments + seg) * C + chan, seg_dz_xhat / count,
                     mask=chan < C)
            dweight += seg_dz_xhat
            dbias += seg_dz
        tl.store(dw_ptr + chan, dweight.to(dw_ptr.dtype.element_ty), mask=chan < C)
        tl.store(db_ptr + chan, dbias.to(db_ptr.dtype.element_ty), mask=chan < C)


@triton.jit(do_not_specialize=SEGMENT_ENDS)
def _backward_kernel(dy_ptr, x_ptr, dx_ptr, stats_ptr, sums_ptr, w_ptr, b_ptr, seed_ptr, B1, B2,
                     B3, R, C, S, num_s_blocks, num_b, num_segments,
                     NEGATIVE_SLOPE: tl.constexpr, P: tl.constexpr, KEEP_SCALE: tl.constexpr,
                     HAS_DROPOUT: tl.constexpr, SHARED_PHILOX: tl.constexpr,
                     CHANNELS_LAST: tl.constexpr, SWAPPED: tl.constexpr, IS_FP64: tl.constexpr,
                     BLOCK_A: tl.constexpr, BLOCK_B: tl.constexpr, GROUP: tl.constexpr):
    pid_a, pid_b, offs, logical, in_bounds, x, z, scale, xhat, at, swapped = _normalized_tile(
        x_ptr, stats_ptr, w_ptr, b_ptr, B1, B2, B3, R, C, S, num_s_blocks, num_b, num_segments,
        CHANNELS_LAST, IS_FP64, BLOCK_A, BLOCK_B, GROUP)
    dy = tl.load(dy_ptr + (swapped if SWAPPED else offs), mask=in_bounds, other=0.0).to(x.dtype)
    dz = _slope_and_mask(dy, z, seed_ptr, logical, pid_a, pid_b, C, S, num_s_blocks,
                         NEGATIVE_SLOPE, P, KEEP_SCALE, HAS_DROPOUT, SHARED_PHILOX,
                         CHANNELS_LAST, BLOCK_A, BLOCK_B)
    mean_dz = tl.load(sums_ptr + at, mask=in_bounds, other=0.0).to(x.dtype)
    mean_dz_xhat = tl.load(sums_ptr + num_segments * C + at, mask=in_bounds,
                           other=0.0).to(x.dtype)
    dx = scale * (dz - mean_dz - xhat * mean_dz_xhat)
    tl.store(dx_ptr + offs, dx.to(dx_ptr.dtype.element_ty), mask=in_bounds)


def _segment_args(bounds: tuple[int, ...]) -> tuple[int, int, int]:
    """B1, B2, B3: the ends of the first three segments, N for those that do not exist."""
    ends = list(bounds[:-1]) + [bounds[-1]] * (4 - len(bounds))
    return ends[0], ends[1], ends[2]


class _Reduction:
    """How the two reductions split their work: ``grid`` (channel blocks, slices), the
    ``splits`` argument, and the partial results' and arrival counters' buffers."""

    def __init__(self, x: torch.Tensor, plan, bounds: tuple[int, ...]):
        blocks = triton.cdiv(plan.C, BLOCK_CHANNELS)
        largest = max(end - start for start, end in zip((0, *bounds), bounds)) * plan.S
        self.splits = max(1, min(MAX_SLICES, largest // (BLOCK_ROWS * TILES_PER_SLICE)))
        self.grid = (blocks, self.splits)
        self.partials = torch.empty(self.splits, 2, len(bounds), plan.C,
                                    dtype=reference.compute_dtype(x.dtype), device=x.device)
        stream = torch.cuda.current_stream(x.device).cuda_stream if x.is_cuda else 0
        self.counters = _arrival_counters(x.device, blocks, stream)


@functools.lru_cache(maxsize=None)
def _arrival_counters(device: torch.device, blocks: int, stream: int) -> torch.Tensor:
    # zero between launches (each launch's last programs put them back), so made once: no
    # launch per call, and a CUDA graph's replays find them zero. One set per stream, where
    # launches run in order: launches on two streams at once never share one.
    return torch.zeros(blocks, dtype=torch.int32, device=device)


def forward_triton(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                   bounds: tuple[int, ...], eps: float, seed: torch.Tensor,
                   negative_slope: float, p: float, running_mean: torch.Tensor | None,
                   running_var: torch.Tensor | None, momentum: float, swap_layout: bool
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """(y, stats) for x (N, C, ...) in a native layout, non-empty, y in x's layout or, where
    ``swap_layout`` (4-D x), the other one; stats (2, S, C) holds the per-segment mean and
    1/sqrt(var + eps). Moves the running statistics when given."""
    plan = _Launch.plan(x)
    segments = len(bounds)
    stats = torch.empty(2, segments, plan.C, dtype=reference.compute_dtype(x.dtype),
                        device=x.device)
    track = running_mean is not None
    work = _Reduction(x, plan, bounds)
    _statistics_kernel[work.grid](
        x, work.partials, work.counters, stats, running_mean if track else stats,
        running_var if track else stats, *_segment_args(bounds), x.shape[0], plan.C, plan.S,
        work.splits, momentum, EPS=eps,
        num_segments=segments, TRACK=track, CHANNELS_LAST=plan.channels_last,
        IS_FP64=x.dtype == torch.float64, BLOCK_R=BLOCK_ROWS, BLOCK_C=BLOCK_CHANNELS)
    y = reference.output_like(x, swap_layout)
    flags = _fp_flags(x, negative_slope, p)
    _forward_kernel[plan.grid](x, y, stats, weight, bias, seed, *_segment_args(bounds),
                               *plan.args(), num_segments=segments, SWAPPED=swap_layout,
                               **plan.constexprs(), **flags)
    return y, stats


def backward_triton(dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
                    bias: torch.Tensor, stats: torch.Tensor, bounds: tuple[int, ...],
                    seed: torch.Tensor, negative_slope: float, p: float, swap_layout: bool
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dx, dweight, dbias) for x in a native layout, non-empty; dy is read in y's layout
    (the other one where ``swap_layout``), dx written in x's."""
    plan = _Launch.plan(x)
    dy = reference.native_layout(dy, plan.channels_last != swap_layout)
    segments = len(bounds)
    means = torch.empty_like(stats)
    dweight, dbias = torch.empty_like(weight), torch.empty_like(bias)
    flags = _fp_flags(x, negative_slope, p)
    work = _Reduction(x, plan, bounds)
    _reduction_kernel[work.grid](
        dy, x, stats, weight, bias, seed, work.partials, work.counters, means, dweight, dbias,
        *_segment_args(bounds), x.shape[0], plan.C, plan.S, work.splits, num_segments=segments,
        CHANNELS_LAST=plan.channels_last, SWAPPED=swap_layout, BLOCK_R=BLOCK_ROWS,
        BLOCK_C=BLOCK_CHANNELS, **flags)
    dx = torch.empty_like(x)
    _backward_kernel[plan.grid](dy, x, dx, stats, means, weight, bias, seed,
                                *_segment_args(bounds), *plan.args(), num_segments=segments,
                                SWAPPED=swap_layout, **plan.constexprs(), **flags)
    return dx, dweight, dbias
