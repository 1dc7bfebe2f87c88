"""Fused per-channel affine + leaky-ReLU + inverted dropout: the op, its autograd and the
dispatch to its paths (Triton launchers in :mod:`._triton_leaky_relu_dropout`, the compiled
CPU twins through :mod:`._inductor`).

One pass reads ``x`` and writes ``y``. Backward reads ``x`` and ``dy``, regenerates the dropout
mask from the seed (no mask is ever stored), writes ``dx`` and reduces ``dscale``/``dshift`` per
channel. Channels-first and channels-last tensors run natively; anything else is made
contiguous first (:func:`reference.native_layout`).
"""
from __future__ import annotations

from typing import Optional

import torch

from . import _checks, _inductor, _transforms, reference
from ._backend import backend_for, call_op, triton_module


# fp32 lanes in one AVX-512 vector: the compiled CPU loops vectorize along the fastest dim
CPU_VECTOR_LANES = 16


def _inductor_layout(t: torch.Tensor) -> torch.Tensor:
    """``t`` as the compiled CPU loops read it fastest. A channels-last tensor with fewer
    channels than one vector (an RGB image) leaves the vectors mostly empty, which costs far
    more than the two layout copies. Every other tensor is returned as it is."""
    if (t.dim() > 2 and t.shape[1] < CPU_VECTOR_LANES and not t.is_contiguous()
            and reference.is_channels_last(t)):
        return t.contiguous()
    return t


def _as_ncs(t: torch.Tensor) -> torch.Tensor:
    """A view of a channels-first or channels-last tensor as (N, C, S): the compiled CPU path
    then sees one rank whatever the input's, so it compiles once per layout, not per rank."""
    n = t.shape[0]
    c = t.shape[1] if t.dim() > 1 else 1
    return t.view(n, c, -1) if n * c else t.reshape(n, c, 0)


def _forward_inductor(x, scale, shift, seed, negative_slope, p, swap_layout):
    x_run = _inductor_layout(x)
    y = _inductor.call(reference.leaky_relu_dropout_forward, _as_ncs(x_run), scale, shift,
                       seed, negative_slope, p).view(x.shape)
    # the loops write x_run's layout: another one costs a copy (no CPU policy asks for one)
    return y if x_run is x and not swap_layout else \
        reference.output_like(x, swap_layout).copy_(y)


def _forward_triton(*args):
    return triton_module("leaky_relu_dropout").forward_triton(*args)


def _backward_inductor(dy, x, scale, shift, seed, negative_slope, p, affine_grads,
                       swap_layout):
    x_run = _inductor_layout(x)
    dy_run = reference.native_layout(dy, x_run is x and reference.is_channels_last(x))
    dx, dscale, dshift = _inductor.call(reference.leaky_relu_dropout_backward, _as_ncs(dy_run),
                                        _as_ncs(x_run), scale, shift, seed, negative_slope, p,
                                        affine_grads)
    dx = dx.view(x.shape)
    return (dx if x_run is x else torch.empty_like(x).copy_(dx)), dscale, dshift


def _backward_triton(*args):
    return triton_module("leaky_relu_dropout").backward_triton(*args)


@torch.library.custom_op("ssgan::leaky_relu_dropout_fwd", mutates_args=())
def _forward_op(x: torch.Tensor, scale: Optional[torch.Tensor], shift: Optional[torch.Tensor],
                seed: torch.Tensor, negative_slope: float, p: float, swap_layout: bool,
                backend: str) -> torch.Tensor:
    x = reference.native_layout(x)
    if x.numel() == 0:
        return reference.output_like(x, swap_layout)
    launch = _forward_inductor if backend == "inductor" else _forward_triton
    return launch(x, scale, shift, seed, negative_slope, p, swap_layout)


@_forward_op.register_fake
def _(x, scale, shift, seed, negative_slope, p, swap_layout, backend):
    return reference.output_like(x, swap_layout)


@torch.library.custom_op("ssgan::leaky_relu_dropout_bwd", mutates_args=())
def _backward_op(dy: torch.Tensor, x: torch.Tensor, scale: Optional[torch.Tensor],
                 shift: Optional[torch.Tensor], seed: torch.Tensor, negative_slope: float,
                 p: float, affine_grads: bool, swap_layout: bool, backend: str
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    x = reference.native_layout(x)
    # an empty x launches nothing on the Triton path, which also makes its empty affine grads
    launch = _backward_inductor if backend == "inductor" and x.numel() else _backward_triton
    return launch(dy, x, scale, shift, seed, negative_slope, p, affine_grads, swap_layout)


@_backward_op.register_fake
def _(dy, x, scale, shift, seed, negative_slope, p, affine_grads, swap_layout, backend):
    dscale = scale.new_empty(scale.shape) if (affine_grads and scale is not None) \
        else x.new_empty(0)
    dshift = shift.new_empty(shift.shape) if (affine_grads and shift is not None) \
        else x.new_empty(0)
    return reference.output_like(x), dscale, dshift


class LeakyReLUDropoutFunction(torch.autograd.Function):
    """Autograd for the fused op. Saves ``x``, ``scale``, ``shift`` and the seed tensor only."""

    @staticmethod
    def forward(x, scale, shift, seed, negative_slope, p, swap_layout, backend):
        return call_op(_forward_op, x, scale, shift, seed, negative_slope, p, swap_layout,
                       backend)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, scale, shift, seed, ctx.negative_slope, ctx.p, ctx.swap_layout, ctx.backend = inputs
        ctx.save_for_backward(x, scale, shift, seed)

    @staticmethod
    def backward(ctx, dy):
        x, scale, shift, seed = ctx.saved_tensors
        affine_grads = ctx.needs_input_grad[1] or ctx.needs_input_grad[2]
        args = (dy, x, scale, shift, seed, ctx.negative_slope, ctx.p, affine_grads)
        if _transforms.building_backward_graph():
            dx, dscale, dshift = reference.leaky_relu_dropout_backward(*args)
        else:
            dx, dscale, dshift = call_op(_backward_op, *args, ctx.swap_layout, ctx.backend)
        return (dx if ctx.needs_input_grad[0] else None,
                dscale if ctx.needs_input_grad[1] else None,
                dshift if ctx.needs_input_grad[2] else None, None, None, None, None, None)

    vmap = _transforms.vmap_refusal("leaky_relu_dropout")


def leaky_relu_dropout(x: torch.Tensor, *, negative_slope: float = 0.2, p: float = 0.0,
                       training: bool = True, seed: int | torch.Tensor | None = None,
                       scale: torch.Tensor | None = None, shift: torch.Tensor | None = None,
                       memory_format: torch.memory_format | None = None) -> torch.Tensor:
    """``y = dropout_p(leaky_relu(x * scale[c] + shift[c], negative_slope))`` in one pass.

    x: (N, C, ...) float64/32/16 or bfloat16, contiguous, channels_last or strided.
    scale, shift: optional (C,) float tensors (a BatchNorm folded in); c indexes dim 1 of x.
    p: drop probability in [0, 1); kept values are scaled by 1 / (1 - p). No dropout when
    ``training`` is False or p == 0.
    seed: int in [0, 2**63), a one-element int64 tensor, or None to draw one from torch's
    generator. Equal seeds and shapes give equal masks on every backend.
    memory_format: y's layout, None for x's; ``torch.contiguous_format`` or, for a 4-D x,
    ``torch.channels_last``. The kernel writes it in its one pass (and reads y's gradient in
    it): a channels-first image batch becomes a channels-last model's input for free.
    Returns y with x's shape and dtype, in ``memory_format``, else in x's memory layout when x
    is contiguous or channels-last, contiguous otherwise. Differentiable in x, scale and shift.
    """
    reference.check_leaky_relu_dropout_args(x, p, scale, shift, memory_format)
    backend = backend_for(x)
    if backend == "torch":
        return reference.leaky_relu_dropout(x, negative_slope=negative_slope, p=p,
                                             training=training, seed=seed, scale=scale,
                                             shift=shift, memory_format=memory_format)
    _transforms.check_no_tangents("leaky_relu_dropout", x, scale, shift)
    drop = float(p) if training else 0.0
    seed_tensor = (_checks.resolve_seed(seed, x.device) if drop > 0
                   else _checks.unused_seed(x.device))
    # the kernels index scale and shift with stride 1 (C elements: the copy is free)
    scale, shift = (v.contiguous() if v is not None else None for v in (scale, shift))
    return LeakyReLUDropoutFunction.apply(x, scale, shift, seed_tensor, float(negative_slope),
                                          drop, reference.swaps_layout(x, memory_format),
                                          backend)
