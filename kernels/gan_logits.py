"""Numerically stable GAN logit head, ``logsumexp(real class logits) - fake logit``: the op,
its autograd and the dispatch to its paths (Triton launchers in :mod:`._triton_gan_logits`,
the compiled CPU twins through :mod:`._inductor`).

Forward also keeps the fp32 log-sum-exp of each row, which makes backward a single
elementwise pass: ``d/dz_j = g * softmax_j``, and ``-g`` for the fake column.
"""
from __future__ import annotations

import torch

from . import _checks, _inductor, _transforms, reference
from ._backend import backend_for, call_op, triton_module


def _forward_inductor(class_logits, extra_class):
    return _inductor.call(reference.gan_logits_forward, class_logits, extra_class)


def _forward_triton(class_logits, extra_class):
    return triton_module("gan_logits").forward_triton(class_logits, extra_class)


def _backward_inductor(dout, class_logits, lse, extra_class):
    return _inductor.call(reference.gan_logits_backward, dout, class_logits, lse, extra_class)


def _backward_triton(dout, class_logits, lse, extra_class):
    return triton_module("gan_logits").backward_triton(dout, class_logits, lse, extra_class)


@torch.library.custom_op("ssgan::gan_logits_fwd", mutates_args=())
def _forward_op(class_logits: torch.Tensor, extra_class: bool,
                backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    if not class_logits.shape[0]:  # nothing to launch or compile
        return reference.gan_logits_forward(class_logits, extra_class)
    launch = _forward_inductor if backend == "inductor" else _forward_triton
    return launch(class_logits, extra_class)


@_forward_op.register_fake
def _(class_logits, extra_class, backend):
    batch = class_logits.shape[0]
    return (class_logits.new_empty(batch),
            class_logits.new_empty(batch, dtype=reference.compute_dtype(class_logits.dtype)))


@torch.library.custom_op("ssgan::gan_logits_bwd", mutates_args=())
def _backward_op(dout: torch.Tensor, class_logits: torch.Tensor, lse: torch.Tensor,
                 extra_class: bool, backend: str) -> torch.Tensor:
    if not class_logits.shape[0]:  # nothing to launch or compile
        return reference.gan_logits_backward(dout, class_logits, lse, extra_class)
    launch = _backward_inductor if backend == "inductor" else _backward_triton
    return launch(dout, class_logits, lse, extra_class)


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
        ctx.set_materialize_grads(False)  # no zeros kernel for lse's gradient, never used

    @staticmethod
    def backward(ctx, dout, _dlse):
        if dout is None:  # grads are not materialized: an undefined one stays undefined
            return None, None, None
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
