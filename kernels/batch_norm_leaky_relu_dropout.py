"""Batch norm with per-segment batch statistics, then leaky ReLU and dropout: the op, its
autograd and the dispatch to its paths (Triton launchers in
:mod:`._triton_batch_norm_leaky_relu_dropout`, the compiled CPU twins through :mod:`._inductor`).

A batch made of segments (real, generated, labeled images) normalises each segment with its own
statistics, so one call over the concatenated batch is the same function as one call per
segment, without copying a segment out. Forward is two launches on a GPU (statistics, then the
elementwise pass), backward two (per-segment sums, then dx); the dropout mask is regenerated
from the seed, never stored.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from . import _checks, _inductor, _transforms, reference
from ._backend import backend_for, call_op, triton_module


def _one_or_more(bounds):
    """The twins' segments argument: None for one segment, so that the compiled graph serves
    every batch size (the segment ends would be compile-time constants)."""
    return None if len(bounds) == 1 else bounds


def _forward_inductor(x, weight, bias, bounds, eps, seed, negative_slope, p, running_mean,
                      running_var, momentum, swap_layout):
    y, stats, var = _inductor.call(reference.batch_norm_leaky_relu_dropout_forward, x, weight,
                                   bias, _one_or_more(bounds), eps, seed, negative_slope, p,
                                   swap_layout)
    if running_mean is not None:
        reference.update_running_statistics(running_mean, running_var, stats[0, 0], var[0],
                                            bounds[0] * x[0, 0].numel(), momentum)
    return y, stats


def _forward_triton(*args):
    return triton_module("batch_norm_leaky_relu_dropout").forward_triton(*args)


def _backward_inductor(dy, x, weight, bias, stats, bounds, seed, negative_slope, p,
                       swap_layout):
    # the compiled loops read dy in whichever layout it comes
    return _inductor.call(reference.batch_norm_leaky_relu_dropout_backward, dy, x, weight, bias,
                          stats, _one_or_more(bounds), seed, negative_slope, p)


def _backward_triton(*args):
    return triton_module("batch_norm_leaky_relu_dropout").backward_triton(*args)


@torch.library.custom_op("ssgan::batch_norm_leaky_relu_dropout_fwd",
                         mutates_args=("running_mean", "running_var"))
def _forward_op(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, bounds: Sequence[int],
                eps: float, seed: torch.Tensor, negative_slope: float, p: float,
                running_mean: Optional[torch.Tensor], running_var: Optional[torch.Tensor],
                momentum: float, swap_layout: bool,
                backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    x = reference.native_layout(x)
    launch = _forward_inductor if backend == "inductor" else _forward_triton
    return launch(x, weight, bias, tuple(bounds), eps, seed, negative_slope, p, running_mean,
                  running_var, momentum, swap_layout)


@_forward_op.register_fake
def _(x, weight, bias, bounds, eps, seed, negative_slope, p, running_mean, running_var,
      momentum, swap_layout, backend):
    stats = x.new_empty(2, len(bounds), x.shape[1], dtype=reference.compute_dtype(x.dtype))
    return reference.output_like(x, swap_layout), stats


@torch.library.custom_op("ssgan::batch_norm_leaky_relu_dropout_bwd", mutates_args=())
def _backward_op(dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                 stats: torch.Tensor, bounds: Sequence[int], seed: torch.Tensor,
                 negative_slope: float, p: float, swap_layout: bool, backend: str
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    x = reference.native_layout(x)
    # dy in y's layout: x's, or the other one where the forward swapped
    dy = reference.native_layout(dy, reference.is_channels_last(x) != swap_layout)
    launch = _backward_inductor if backend == "inductor" else _backward_triton
    return launch(dy, x, weight, bias, stats, tuple(bounds), seed, negative_slope, p,
                  swap_layout)


@_backward_op.register_fake
def _(dy, x, weight, bias, stats, bounds, seed, negative_slope, p, swap_layout, backend):
    return reference.output_like(x), torch.empty_like(weight), torch.empty_like(bias)


class BatchNormLeakyReLUDropoutFunction(torch.autograd.Function):
    """Autograd for the block. Saves x, the affine, the (2, S, C) statistics and the seed."""

    @staticmethod
    def forward(x, weight, bias, bounds, eps, seed, negative_slope, p, running_mean,
                running_var, momentum, swap_layout, backend):
        return call_op(_forward_op, x, weight, bias, bounds, eps, seed, negative_slope, p,
                       running_mean, running_var, momentum, swap_layout, backend)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, weight, bias, ctx.bounds, ctx.eps, seed, ctx.negative_slope, ctx.p, *_, \
            ctx.swap_layout, ctx.backend = inputs
        ctx.save_for_backward(x, weight, bias, output[1], seed)
        ctx.mark_non_differentiable(output[1])
        ctx.set_materialize_grads(False)

    @staticmethod
    def backward(ctx, dy, _dstats):
        if dy is None:
            return (None,) * 13
        x, weight, bias, stats, seed = ctx.saved_tensors
        if _transforms.building_backward_graph():
            # the twin's math, which autograd differentiates again (the statistics recomputed:
            # the saved ones are detached)
            _, stats, _ = reference.batch_norm_leaky_relu_dropout_forward(
                x, weight, bias, ctx.bounds, ctx.eps, seed, ctx.negative_slope, ctx.p)
        args = (dy, x, weight, bias, stats, ctx.bounds, seed, ctx.negative_slope, ctx.p)
        if _transforms.building_backward_graph():
            dx, dweight, dbias = reference.batch_norm_leaky_relu_dropout_backward(*args)
        else:
            dx, dweight, dbias = call_op(_backward_op, *args, ctx.swap_layout, ctx.backend)
        return (dx if ctx.needs_input_grad[0] else None,
                dweight if ctx.needs_input_grad[1] else None,
                dbias if ctx.needs_input_grad[2] else None) + (None,) * 10

    vmap = _transforms.vmap_refusal("batch_norm_leaky_relu_dropout")


def batch_norm_leaky_relu_dropout(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, *,
                                  segments: Sequence[int] | None = None,
                                  running_mean: torch.Tensor | None = None,
                                  running_var: torch.Tensor | None = None,
                                  momentum: float = 0.1, eps: float = 1e-5,
                                  negative_slope: float = 0.2, p: float = 0.0,
                                  training: bool = True,
                                  seed: int | torch.Tensor | None = None,
                                  memory_format: torch.memory_format | None = None
                                  ) -> torch.Tensor:
    """``dropout_p(leaky_relu(batch_norm(x)))`` with each segment's own batch statistics.

    x: (N, C, ...) float64/32/16 or bfloat16, channels-first, channels-last or strided.
    weight, bias: (C,) float, the BatchNorm's affine. segments: row counts (up to 4, summing to
    N; default one segment): rows [0, s0) are segment 0, the next s1 rows segment 1, and so on;
    each is normalised by its own mean and biased variance (computed in fp32, fp64 for fp64,
    centred before squaring). running_mean, running_var: optional (C,) buffers, moved in place
    by ``momentum`` towards segment 0's mean and unbiased variance, as ATen's batch norm does.
    p: drop probability in [0, 1) (no dropout when ``training`` is False or p == 0); seed as in
    :func:`ssgan.kernels.leaky_relu_dropout`, whose mask it draws for the same seed and shape.
    memory_format: y's layout as in :func:`ssgan.kernels.leaky_relu_dropout` (written, and its
    gradient read, in the elementwise passes).
    Returns y with x's shape and dtype, in ``memory_format``, else in x's layout when x is
    contiguous or channels-last. Differentiable in x, weight and bias.
    """
    bounds = reference.check_batch_norm_args(x, weight, bias, segments, running_mean,
                                             running_var, p, momentum, memory_format)
    backend = backend_for(x)
    if backend == "torch":
        return reference.batch_norm_leaky_relu_dropout(
            x, weight, bias, segments=segments, running_mean=running_mean,
            running_var=running_var, momentum=momentum, eps=eps, negative_slope=negative_slope,
            p=p, training=training, seed=seed, memory_format=memory_format)
    _transforms.check_no_tangents("batch_norm_leaky_relu_dropout", x, weight, bias)
    drop = float(p) if training else 0.0
    seed_tensor = _checks.resolve_seed(seed, x.device) if drop > 0 else _checks.unused_seed(
        x.device)
    return BatchNormLeakyReLUDropoutFunction.apply(
        x, weight.contiguous(), bias.contiguous(), bounds, float(eps), seed_tensor,
        float(negative_slope), drop, running_mean, running_var, float(momentum),
        reference.swaps_layout(x, memory_format), backend)[0]
