"""The generator's feature-matching loss in one op: the mean absolute difference between the
mean features of the real rows and of the generated rows. The op, its autograd and the
dispatch to its paths (Triton launchers in :mod:`._triton_feature_matching`, the compiled CPU
twins through :mod:`._inductor`): one launch forward, one backward, where the two means, their
difference, its absolute value and its mean take five launches each way.
"""
from __future__ import annotations

import torch

from . import _inductor, _transforms, reference
from ._backend import backend_for, call_op, triton_module


def _rows_contiguous(t: torch.Tensor) -> torch.Tensor:
    """``t`` (R, F) with contiguous rows, as the kernels read it (a row slice of a contiguous
    batch already is one)."""
    return t if t.stride(1) == 1 or t.shape[1] == 1 else t.contiguous()


def _forward_inductor(real, fake):
    return _inductor.call(reference.feature_matching_forward, real, fake)


def _forward_triton(real, fake):
    return triton_module("feature_matching").forward_triton(_rows_contiguous(real),
                                                            _rows_contiguous(fake))


def _backward_inductor(*args):
    return _inductor.call(reference.feature_matching_backward, *args)


def _backward_triton(*args):
    return triton_module("feature_matching").backward_triton(*args)


@torch.library.custom_op("ssgan::feature_matching_fwd", mutates_args=())
def _forward_op(real: torch.Tensor, fake: torch.Tensor,
                backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    launch = _forward_inductor if backend == "inductor" else _forward_triton
    return launch(real, fake)


@_forward_op.register_fake
def _(real, fake, backend):
    dtype = reference.compute_dtype(real.dtype)
    return real.new_empty((), dtype=dtype), real.new_empty(real.shape[1], dtype=dtype)


@torch.library.custom_op("ssgan::feature_matching_bwd", mutates_args=())
def _backward_op(dloss: torch.Tensor, diff: torch.Tensor, real: torch.Tensor,
                 fake: torch.Tensor, backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    launch = _backward_inductor if backend == "inductor" else _backward_triton
    return launch(dloss.contiguous(), diff, real, fake)


@_backward_op.register_fake
def _(dloss, diff, real, fake, backend):
    return (real.new_empty(real.shape).contiguous(), fake.new_empty(fake.shape).contiguous())


class FeatureMatchingFunction(torch.autograd.Function):
    """Autograd for the loss. Saves the difference of the means (F,) and the inputs' shapes."""

    @staticmethod
    def forward(real, fake, backend):
        return call_op(_forward_op, real, fake, backend)

    @staticmethod
    def setup_context(ctx, inputs, output):
        real, fake, ctx.backend = inputs
        ctx.mark_non_differentiable(output[1])
        # the backward reads only the shapes and dtypes of the inputs, not their values
        ctx.save_for_backward(output[1], real.new_empty(()).expand(real.shape),
                              fake.new_empty(()).expand(fake.shape))

    @staticmethod
    def backward(ctx, dloss, _):
        diff, real, fake = ctx.saved_tensors
        if _transforms.building_backward_graph():
            return (*reference.feature_matching_backward(dloss, diff, real, fake), None)
        return (*call_op(_backward_op, dloss, diff, real, fake, ctx.backend), None)

    vmap = _transforms.vmap_refusal("feature_matching")


def feature_matching(features_real: torch.Tensor, features_fake: torch.Tensor) -> torch.Tensor:
    """The generator's feature-matching loss, ``mean_f |mean_r real[r, f] - mean_q fake[q,
    f]|`` (the notebook's L1 between the batches' mean features), in one op.

    features_real: (R, F) and features_fake: (Q, F) float64/32/16 or bfloat16, one dtype, R and
    Q >= 1 (e.g. row slices of one pass's features). Returns a 0-dim float32 tensor (float64
    for float64), computed in it. Differentiable in both inputs; the gradient of |t| at t = 0
    is 0, as torch.abs's.
    """
    reference.check_feature_matching_args(features_real, features_fake)
    backend = backend_for(features_real)
    if backend == "torch":
        return reference.feature_matching_forward(features_real, features_fake)[0]
    _transforms.check_no_tangents("feature_matching", features_real, features_fake)
    return FeatureMatchingFunction.apply(features_real, features_fake, backend)[0]
