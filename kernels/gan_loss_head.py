"""The semi-supervised GAN's loss head in one op: from the class logits of a step's
concatenated batch [real; fake; labeled], the supervised cross-entropy, both binary
cross-entropies of the log-sum-exp GAN logits, the entropy of the real rows' class
distribution, and the batch's hits. The op, its autograd and the dispatch to its paths
(Triton launchers in :mod:`._triton_gan_loss_head`, the compiled CPU twins through
:mod:`._inductor`): one launch forward, one backward, where these terms otherwise take a
few dozen small ones.
"""
from __future__ import annotations

from typing import Sequence

import torch

from . import _checks, _inductor, _target_checks, _transforms, reference
from ._backend import backend_for, call_op, triton_module


def _forward_inductor(logits, target, weight, segments, extra_class):
    return _inductor.call(reference.gan_loss_head_forward, logits.contiguous(), target, weight,
                          segments, extra_class)


def _forward_triton(logits, target, weight, segments, extra_class):
    return triton_module("gan_loss_head").forward_triton(logits.contiguous(), target, weight,
                                                          segments, extra_class)


def _backward_inductor(*args):
    return _inductor.call(reference.gan_loss_head_backward, *args)


def _backward_triton(*args):
    return triton_module("gan_loss_head").backward_triton(*args)


@torch.library.custom_op("ssgan::gan_loss_head_fwd", mutates_args=())
def _forward_op(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor,
                segments: Sequence[int], extra_class: bool, backend: str) -> torch.Tensor:
    launch = _forward_inductor if backend == "inductor" else _forward_triton
    out, first_bad = launch(logits, target, weight, tuple(segments), extra_class)
    # one scalar read here, or a device flag inside a training loop (see _target_checks)
    _target_checks.report(first_bad < target.shape[0], lambda: _checks.raise_bad_target(
        target, int(first_bad.item()), logits.shape[1]))
    return out


@_forward_op.register_fake
def _(logits, target, weight, segments, extra_class, backend):
    return logits.new_empty(6, dtype=reference.compute_dtype(logits.dtype))


@torch.library.custom_op("ssgan::gan_loss_head_bwd", mutates_args=())
def _backward_op(dout: torch.Tensor, out: torch.Tensor, logits: torch.Tensor,
                 target: torch.Tensor, weight: torch.Tensor, segments: Sequence[int],
                 extra_class: bool, backend: str) -> torch.Tensor:
    launch = _backward_inductor if backend == "inductor" else _backward_triton
    return launch(dout.contiguous(), out, logits.contiguous(), target, weight,
                  tuple(segments), extra_class)


@_backward_op.register_fake
def _(dout, out, logits, target, weight, segments, extra_class, backend):
    return logits.new_empty(logits.shape).contiguous()


class GANLossHeadFunction(torch.autograd.Function):
    """Autograd for the head. Saves the logits, targets, weights and the six outputs."""

    @staticmethod
    def forward(logits, target, weight, segments, extra_class, backend):
        return call_op(_forward_op, logits, target, weight, segments, extra_class, backend)

    @staticmethod
    def setup_context(ctx, inputs, output):
        logits, target, weight, ctx.segments, ctx.extra_class, ctx.backend = inputs
        ctx.save_for_backward(logits, target, weight, output)

    @staticmethod
    def backward(ctx, dout):
        logits, target, weight, out = ctx.saved_tensors
        args = (dout, out, logits, target, weight, ctx.segments, ctx.extra_class)
        if _transforms.building_backward_graph():
            out, _ = reference.gan_loss_head_forward(logits, target, weight, ctx.segments,
                                                     ctx.extra_class)
            dx = reference.gan_loss_head_backward(dout, out, *args[2:])
        else:
            dx = call_op(_backward_op, *args, ctx.backend)
        return dx, None, None, None, None, None

    vmap = _transforms.vmap_refusal("gan_loss_head")


def gan_loss_head(class_logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, *,
                  segments: Sequence[int], extra_class: bool = False) -> torch.Tensor:
    """The semi-supervised GAN's loss terms of one step, in one op.

    class_logits: (B, K[+1]) float64/32/16 or bfloat16, the rows of the segments ``segments``
    = (real, fake) or (real, fake, labeled) concatenated in that order; with ``extra_class``
    the last column is the fake class's logit. target: (L,) int64 and mask: (L,) bool or float
    weights, for the supervised rows: the labeled segment when there are three, else the real
    segment (L its size). A target outside [0, K[+1]) on a row with mask != 0 is a ValueError.
    Returns (6,) float32 (float64 for float64), in the order of
    ``reference.HEAD_OUTPUTS``:
    supervised (the masked mean cross-entropy over every column, 0 when no row is labeled),
    bce_real and bce_fake (the means of softplus(-l) over real rows and softplus(l) over fake
    rows, l the stable GAN logit of :func:`ssgan.kernels.gan_logits`), entropy (the mean
    entropy of softmax over the K real-class columns on real rows), hits (labeled rows whose
    argmax over those columns is the target) and labeled (the mask's sum). Differentiable in
    ``class_logits`` through the first four; hits and labeled carry no gradient.
    """
    weight = reference.check_gan_loss_head_args(class_logits, target, mask, segments,
                                                extra_class)
    backend = backend_for(class_logits)
    if backend == "torch":
        return reference.gan_loss_head(class_logits, target, mask, segments=tuple(segments),
                                       extra_class=extra_class)
    _transforms.check_no_tangents("gan_loss_head", class_logits)
    return GANLossHeadFunction.apply(class_logits, target.long().contiguous(),
                                     weight.contiguous(), tuple(segments), bool(extra_class),
                                     backend)
