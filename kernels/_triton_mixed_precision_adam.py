"""Triton kernel and launcher of :func:`ssgan.kernels.mixed_precision_adam_` (the op's module
holds the contract). Imported only by a call on the Triton path.

One launch steps every tensor of a player: the tensors go in as tuples, and each program finds
its tensor among them (a statically unrolled loop of bounds checks) and updates one block of it.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK = 1024  # elements per program


# (not ``params``: Triton's generated argument binder has a local of that name)
@triton.jit(do_not_specialize=["numels", "starts"])
def _adam_kernel(weights, grads, exp_avgs, exp_avg_sqs, copies, numels, starts, step_ptr, lr_ptr,
                 BETA1: tl.constexpr, BETA2: tl.constexpr, EPS: tl.constexpr,
                 TENSORS: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    # PyTorch's fused Adam in fp32: the bias corrections from this step's count
    step = tl.load(step_ptr).to(tl.float32)
    step_size = tl.load(lr_ptr).to(tl.float32) / (1.0 - tl.exp2(step * tl.log2(BETA1)))
    bias_correction2_sqrt = tl.sqrt(1.0 - tl.exp2(step * tl.log2(BETA2)))
    for i in tl.static_range(TENSORS):
        start = starts[i]
        n = numels[i]
        if (pid >= start) & (pid < start + tl.cdiv(n, BLOCK)):
            offs = (pid - start) * BLOCK + tl.arange(0, BLOCK)
            inside = offs < n
            grad = tl.load(grads[i] + offs, mask=inside, other=0.0).to(tl.float32)
            exp_avg = tl.load(exp_avgs[i] + offs, mask=inside, other=0.0)
            exp_avg_sq = tl.load(exp_avg_sqs[i] + offs, mask=inside, other=0.0)
            param = tl.load(weights[i] + offs, mask=inside, other=0.0)
            exp_avg = BETA1 * exp_avg + (1.0 - BETA1) * grad
            exp_avg_sq = BETA2 * exp_avg_sq + (1.0 - BETA2) * grad * grad
            param -= step_size * exp_avg / (tl.sqrt(exp_avg_sq) / bias_correction2_sqrt + EPS)
            tl.store(exp_avgs[i] + offs, exp_avg, mask=inside)
            tl.store(exp_avg_sqs[i] + offs, exp_avg_sq, mask=inside)
            tl.store(weights[i] + offs, param, mask=inside)
            tl.store(copies[i] + offs, param.to(copies[i].dtype.element_ty), mask=inside)


def adam_triton(params: list[torch.Tensor], grads: list[torch.Tensor],
                exp_avgs: list[torch.Tensor], exp_avg_sqs: list[torch.Tensor],
                copies: list[torch.Tensor], step: torch.Tensor, lr: torch.Tensor, beta1: float,
                beta2: float, eps: float) -> None:
    """One launch over every tensor (each dense, all five of a parameter alike in strides)."""
    numels = [p.numel() for p in params]
    starts, start = [], 0
    for n in numels:
        starts.append(start)
        start += triton.cdiv(n, BLOCK)
    if start == 0:
        return
    _adam_kernel[(start,)](tuple(params), tuple(grads), tuple(exp_avgs), tuple(exp_avg_sqs),
                           tuple(copies), tuple(numels), tuple(starts), step, lr,
                           BETA1=beta1, BETA2=beta2, EPS=eps, TENSORS=len(params), BLOCK=BLOCK)
