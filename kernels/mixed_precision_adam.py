"""Adam that writes low-precision copies of the weights it updates: the optimizer of a bf16
training step on a GPU (Triton launcher in :mod:`._triton_mixed_precision_adam`, the eager twin
elsewhere).

A bf16 step computes with bf16 copies of its fp32 weights and differentiates those copies.
Casting the copies' gradients back to fp32 and the updated weights to bf16 again costs two
launches a step; this update reads the bf16 gradients (widening each in a register, which is
exactly the cast) and writes the next step's bf16 copies as it writes the fp32 weights, in one
launch for all of a player's tensors.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from . import reference
from ._backend import backend_for, triton_module


def _check(params, grads, exp_avgs, exp_avg_sqs, copies, step, lr) -> None:
    lists = {"grads": grads, "exp_avgs": exp_avgs, "exp_avg_sqs": exp_avg_sqs, "copies": copies}
    for name, tensors in lists.items():
        if len(tensors) != len(params):
            raise ValueError(f"{name} must hold one tensor per parameter ({len(params)}), got "
                             f"{len(tensors)}")
    for i, param in enumerate(params):
        if param.dtype != torch.float32:
            raise ValueError(f"params[{i}] must be float32 (the master weights), got "
                             f"{param.dtype}")
        for name, tensors in lists.items():
            t = tensors[i]
            if t.shape != param.shape or t.device != param.device:
                raise ValueError(f"{name}[{i}] must match params[{i}] ({tuple(param.shape)} on "
                                 f"{param.device}), got {tuple(t.shape)} on {t.device}")
            if not t.is_floating_point():
                raise ValueError(f"{name}[{i}] must be a float tensor, got {t.dtype}")
        for name in ("exp_avgs", "exp_avg_sqs"):
            if lists[name][i].dtype != torch.float32:
                raise ValueError(f"{name}[{i}] must be float32 (Adam's state), got "
                                 f"{lists[name][i].dtype}")
    for name, t in (("step", step), ("lr", lr)):
        if t.numel() != 1:
            raise ValueError(f"{name} must be a one-element tensor, got shape {tuple(t.shape)}")


def _same_strides(tensors: list[torch.Tensor], like: list[torch.Tensor]) -> list[torch.Tensor]:
    """Each tensor as it is where it is dense with its parameter's strides, else a copy laid
    out so (the kernel walks all five of a parameter with one flat index)."""
    return [t if t.stride() == p.stride() and reference.is_native_layout(t)
            else torch.empty_like(p, dtype=t.dtype).copy_(t) for t, p in zip(tensors, like)]


@torch.no_grad()
def mixed_precision_adam_(params: Sequence[torch.Tensor], grads: Sequence[torch.Tensor],
                          exp_avgs: Sequence[torch.Tensor], exp_avg_sqs: Sequence[torch.Tensor],
                          copies: Sequence[torch.Tensor], step: torch.Tensor, lr: torch.Tensor,
                          *, beta1: float, beta2: float = 0.999, eps: float = 1e-8) -> None:
    """One step of PyTorch's Adam (no weight decay, no AMSGrad), in place, that also writes
    each updated parameter into its copy.

    params: float32 tensors (dense), updated in place; grads: their gradients, float32 or
    bfloat16/float16 (widened to fp32 before use); exp_avgs, exp_avg_sqs: Adam's float32
    moments, updated in place; copies: one tensor per parameter, of its shape, written with
    the updated parameter in the copy's dtype (pass the parameter itself where there is no
    copy); step: one-element float tensor holding this step's count, already incremented (as
    PyTorch's Adam does before its update); lr: one-element tensor. The arithmetic is fp32;
    on the Triton path it is one launch for every tensor.
    """
    params, grads, exp_avgs, exp_avg_sqs, copies = (
        list(t) for t in (params, grads, exp_avgs, exp_avg_sqs, copies))
    _check(params, grads, exp_avgs, exp_avg_sqs, copies, step, lr)
    if not params:
        return
    if backend_for(params[0]) in ("triton", "interpret"):
        if not all(reference.is_native_layout(p) for p in params):
            raise ValueError("params must be contiguous or channels-last for the fused step")
        grads, exp_avgs, exp_avg_sqs = (_same_strides(t, params)
                                        for t in (grads, exp_avgs, exp_avg_sqs))
        odd = [i for i, c in enumerate(copies) if c is not params[i]
               and (c.stride() != params[i].stride() or not reference.is_native_layout(c))]
        if odd:
            raise ValueError(f"copies{odd} must be dense with their parameters' strides")
        triton_module("mixed_precision_adam").adam_triton(params, grads, exp_avgs, exp_avg_sqs,
                                                          copies, step, lr, beta1, beta2, eps)
        return
    reference.mixed_precision_adam_(params, grads, exp_avgs, exp_avg_sqs, copies, step, lr,
                                    beta1, beta2, eps)
