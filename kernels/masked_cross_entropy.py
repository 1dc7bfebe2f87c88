"""Masked cross-entropy, ``sum_i w_i * CE(logits_i, target_i) / max(1, sum_i w_i)``: the op,
its autograd and the dispatch to its paths (Triton launchers in
:mod:`._triton_masked_cross_entropy`, the compiled CPU twins through :mod:`._inductor`).

Forward also returns the first labeled row whose target is out of range, so the range check
costs one scalar read on the host instead of extra kernels, and none inside
``deferred_target_checks`` (a training loop), where it only sets a device flag. Each row's
log-sum-exp is kept, which makes backward one elementwise pass:
``d/dz_ij = g * w_i / max(1, sum w) * (softmax_ij - [j == target_i])``.
"""
from __future__ import annotations

import torch

from . import _checks, _inductor, _target_checks, _transforms, reference
from ._backend import backend_for, call_op, triton_module


def _forward_inductor(logits, target, weight):
    # Inductor specializes its row reduction on the strides: on an H100 a strided view gave a
    # loss one bit off the contiguous one; a single layout keeps the bits
    return _inductor.call(reference.masked_cross_entropy_forward, logits.contiguous(), target,
                          weight)


def _forward_triton(logits, target, weight):
    return triton_module("masked_cross_entropy").forward_triton(logits, target, weight)


def _backward_inductor(*args):
    return _inductor.call(reference.masked_cross_entropy_backward, *args)


def _backward_triton(*args):
    return triton_module("masked_cross_entropy").backward_triton(*args)


@torch.library.custom_op("ssgan::masked_cross_entropy_fwd", mutates_args=())
def _forward_op(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor,
                backend: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    batch, num_classes = logits.shape
    launch = _forward_inductor if backend == "inductor" else _forward_triton
    loss, lse, denom, first_bad = launch(logits, target, weight)
    # one scalar read here, or a device flag inside a training loop (see _target_checks)
    _target_checks.report(first_bad < batch, lambda: _checks.raise_bad_target(
        target, int(first_bad.item()), num_classes))
    return loss, lse, denom


@_forward_op.register_fake
def _(logits, target, weight, backend):
    scalar = weight.new_empty(())
    return scalar, weight.new_empty(logits.shape[0]), weight.new_empty(())


@torch.library.custom_op("ssgan::masked_cross_entropy_bwd", mutates_args=())
def _backward_op(dloss: torch.Tensor, denom: torch.Tensor, logits: torch.Tensor,
                 target: torch.Tensor, weight: torch.Tensor, lse: torch.Tensor,
                 backend: str) -> torch.Tensor:
    args = (dloss, denom, logits, target, weight, lse)
    if not logits.shape[0]:  # nothing to launch or compile
        return reference.masked_cross_entropy_backward(*args)
    launch = _backward_inductor if backend == "inductor" else _backward_triton
    return launch(*args)


@_backward_op.register_fake
def _(dloss, denom, logits, target, weight, lse, backend):
    return logits.new_empty(logits.shape).contiguous()


class MaskedCrossEntropyFunction(torch.autograd.Function):
    """Autograd for the masked CE: returns (loss, lse, denom) and saves logits, targets,
    weights, one lse per row and the divisor (lse and denom are not differentiable)."""

    @staticmethod
    def forward(logits, target, weight, backend):
        return call_op(_forward_op, logits, target, weight, backend)

    @staticmethod
    def setup_context(ctx, inputs, output):
        logits, target, weight, ctx.backend = inputs
        _, lse, denom = output
        ctx.save_for_backward(logits, target, weight, lse, denom)
        ctx.mark_non_differentiable(lse, denom)
        ctx.set_materialize_grads(False)  # no zeros kernels for lse's and denom's gradients

    @staticmethod
    def backward(ctx, dloss, _dlse, _ddenom):
        if dloss is None:  # grads are not materialized: an undefined one stays undefined
            return None, None, None, None
        logits, target, weight, lse, denom = ctx.saved_tensors
        if _transforms.building_backward_graph():
            _, lse, denom, _ = reference.masked_cross_entropy_forward(logits, target, weight)
            dx = reference.masked_cross_entropy_backward(dloss, denom, logits, target, weight,
                                                         lse)
        else:
            dx = call_op(_backward_op, dloss, denom, logits, target, weight, lse, ctx.backend)
        return dx, None, None, None

    vmap = _transforms.vmap_refusal("masked_cross_entropy")


def masked_cross_entropy(logits: torch.Tensor, target: torch.Tensor,
                         mask: torch.Tensor) -> torch.Tensor:
    """Cross-entropy averaged over the rows that ``mask`` selects.

    logits: (B, C) float64/32/16 or bfloat16, any strides. target: (B,) int64 (or int32) class
    ids; rows with mask 0 may hold anything (e.g. -1), other rows must be in [0, C) or a
    ValueError is raised. mask: (B,) bool, or float weights.
    Returns a 0-dim float32 tensor (float64 for float64 logits):
    ``sum_i mask_i * CE_i / max(1, sum_i mask_i)``; an all-zero mask gives exactly 0 with zero
    gradient. Differentiable in ``logits``.
    """
    _checks.check_logits("logits", logits)
    weight = _checks.check_targets(logits, target, mask)
    backend = backend_for(logits)
    if backend == "torch":
        return reference.masked_cross_entropy(logits, target, mask)
    _transforms.check_no_tangents("masked_cross_entropy", logits)
    if not _checks.int32_addressable(logits):
        logits = logits.contiguous()  # its element count fits, so its copy does
    # the kernels index target and weight with stride 1
    return MaskedCrossEntropyFunction.apply(logits, target.long().contiguous(),
                                            weight.contiguous(), backend)[0]
