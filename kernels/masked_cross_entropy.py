"""Masked cross-entropy: ``sum_i w_i * CE(logits_i, target_i) / max(1, sum_i w_i)``.

Forward is two launches: each program of the reduction kernel computes the weighted loss of a
block of rows (online log-sum-exp over the classes) and writes its partial loss, partial weight
and first out-of-range labeled row; one finishing program then sums the partials in a fixed
order (deterministic, no float atomics) and divides. The range check thus costs one scalar read
on the host instead of extra kernels, and none inside ``deferred_target_checks`` (a training
loop), where it only sets a device flag. Each row's log-sum-exp is kept, which makes backward one
elementwise pass:
``d/dz_ij = g * w_i / max(1, sum w) * (softmax_ij - [j == target_i])``.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import _checks, _inductor, _target_checks, _transforms, reference
from ._backend import backend_for, call_op
from .gan_logits import _blocks, _row_logsumexp


@triton.jit
def _forward_kernel(x_ptr, target_ptr, weight_ptr, lse_ptr, partial_loss_ptr,
                    partial_weight_ptr, partial_bad_ptr, B, C, stride_b, stride_c,
                    IS_FP64: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_C: tl.constexpr):
    pid = tl.program_id(0)
    rows = pid * BLOCK_B + tl.arange(0, BLOCK_B)
    row_ok = rows < B
    lse = _row_logsumexp(x_ptr, rows, row_ok, C, stride_b, stride_c, IS_FP64, BLOCK_B, BLOCK_C)
    weight = tl.load(weight_ptr + rows, mask=row_ok, other=0.0)
    labeled = row_ok & (weight != 0)
    target = tl.load(target_ptr + rows, mask=labeled, other=0)
    in_range = (target >= 0) & (target < C)
    # masked rows may hold any target (e.g. -1), and bad labeled ones are reported, not read
    readable = labeled & in_range
    target_logit = tl.load(x_ptr + rows * stride_b + target * stride_c, mask=readable, other=0.0)
    loss = tl.where(readable, weight * (lse - target_logit.to(lse.dtype)), 0.0)
    tl.store(lse_ptr + rows, lse, mask=row_ok)
    tl.store(partial_loss_ptr + pid, tl.sum(loss, axis=0))
    tl.store(partial_weight_ptr + pid, tl.sum(weight, axis=0))
    tl.store(partial_bad_ptr + pid, tl.min(tl.where(labeled & ~in_range, rows, B), axis=0))


@triton.jit
def _finish_kernel(partial_loss_ptr, partial_weight_ptr, partial_bad_ptr, loss_ptr, denom_ptr,
                   first_bad_ptr, num_partials, B, BLOCK: tl.constexpr):
    """Sums the partials in a fixed order: loss = sum(loss) / max(1, sum(weight))."""
    loss = tl.zeros([BLOCK], partial_loss_ptr.dtype.element_ty)
    weight = tl.zeros([BLOCK], partial_weight_ptr.dtype.element_ty)
    first_bad = tl.full([BLOCK], B, tl.int32)
    for start in range(0, num_partials, BLOCK):
        idx = start + tl.arange(0, BLOCK)
        ok = idx < num_partials
        loss += tl.load(partial_loss_ptr + idx, mask=ok, other=0.0)
        weight += tl.load(partial_weight_ptr + idx, mask=ok, other=0.0)
        first_bad = tl.minimum(first_bad, tl.load(partial_bad_ptr + idx, mask=ok, other=B))
    denom = tl.maximum(tl.sum(weight, axis=0), 1.0)
    tl.store(loss_ptr, tl.sum(loss, axis=0) / denom)
    tl.store(denom_ptr, denom)
    tl.store(first_bad_ptr, tl.min(first_bad, axis=0))


@triton.jit
def _backward_kernel(dloss_ptr, denom_ptr, x_ptr, target_ptr, weight_ptr, lse_ptr, dx_ptr,
                     B, C, stride_b, stride_c, IS_FP64: tl.constexpr, BLOCK_B: tl.constexpr,
                     BLOCK_C: tl.constexpr):
    acc_dtype = tl.float64 if IS_FP64 else tl.float32
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    row_ok = rows < B
    weight = tl.load(weight_ptr + rows, mask=row_ok, other=0.0).to(acc_dtype)
    labeled = row_ok & (weight != 0)
    target = tl.load(target_ptr + rows, mask=labeled, other=-1)
    row_scale = weight * (tl.load(dloss_ptr).to(acc_dtype) / tl.load(denom_ptr).to(acc_dtype))
    lse = tl.load(lse_ptr + rows, mask=row_ok, other=0.0)
    for c0 in range(0, C, BLOCK_C):
        cols = c0 + tl.arange(0, BLOCK_C)
        ok = row_ok[:, None] & (cols[None, :] < C)
        x = tl.load(x_ptr + rows[:, None] * stride_b + cols[None, :] * stride_c, mask=ok,
                    other=0.0).to(acc_dtype)
        one_hot = tl.where(cols[None, :] == target[:, None], 1.0, 0.0)
        dx = tl.where(labeled[:, None], row_scale[:, None] * (tl.exp(x - lse[:, None]) - one_hot),
                      0.0)
        tl.store(dx_ptr + rows[:, None] * C + cols[None, :], dx.to(dx_ptr.dtype.element_ty),
                 mask=ok)


@torch.library.custom_op("ssgan::masked_cross_entropy_fwd", mutates_args=())
def _forward_op(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor,
                backend: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    batch, num_classes = logits.shape
    if backend == "inductor":
        # Inductor specializes its row reduction on the strides: on an H100 a strided view gave
        # a loss one bit off the contiguous one; a single layout keeps the bits
        loss, lse, denom, first_bad = _inductor.call(reference.masked_cross_entropy_forward,
                                                     logits.contiguous(), target, weight)
    else:
        loss, lse, denom, first_bad = _launch_forward(logits, target, weight)
    # one scalar read here, or a device flag inside a training loop (see _target_checks)
    _target_checks.report(first_bad < batch, lambda: _checks.raise_bad_target(
        target, int(first_bad.item()), num_classes))
    return loss, lse, denom


def _launch_forward(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    batch, num_classes = logits.shape
    block_b, block_c = _blocks(num_classes)
    num_programs = max(1, triton.cdiv(batch, block_b))
    new = lambda *shape, dtype=weight.dtype: torch.empty(shape, dtype=dtype, device=logits.device)
    partial_loss, partial_weight = new(num_programs), new(num_programs)
    partial_bad = new(num_programs, dtype=torch.int32)
    lse, loss, denom, first_bad = new(batch), new(), new(), new(1, dtype=torch.int32)
    _forward_kernel[(num_programs,)](
        logits, target, weight, lse, partial_loss, partial_weight, partial_bad, batch,
        num_classes, *logits.stride(), IS_FP64=logits.dtype == torch.float64, BLOCK_B=block_b,
        BLOCK_C=block_c)
    _finish_kernel[(1,)](partial_loss, partial_weight, partial_bad, loss, denom, first_bad,
                         num_programs, batch, BLOCK=min(1024, triton.next_power_of_2(num_programs)))
    return loss, lse, denom, first_bad


@_forward_op.register_fake
def _(logits, target, weight, backend):
    scalar = weight.new_empty(())
    return scalar, weight.new_empty(logits.shape[0]), weight.new_empty(())


@torch.library.custom_op("ssgan::masked_cross_entropy_bwd", mutates_args=())
def _backward_op(dloss: torch.Tensor, denom: torch.Tensor, logits: torch.Tensor,
                 target: torch.Tensor, weight: torch.Tensor, lse: torch.Tensor,
                 backend: str) -> torch.Tensor:
    batch, num_classes = logits.shape
    if backend == "inductor" and batch:
        return _inductor.call(reference.masked_cross_entropy_backward, dloss, denom, logits,
                              target, weight, lse)
    dx = torch.empty(batch, num_classes, dtype=logits.dtype, device=logits.device)
    if batch:
        block_b, block_c = _blocks(num_classes)
        _backward_kernel[(triton.cdiv(batch, block_b),)](
            dloss, denom, logits, target, weight, lse, dx, batch, num_classes, *logits.stride(),
            IS_FP64=logits.dtype == torch.float64, BLOCK_B=block_b, BLOCK_C=block_c)
    return dx


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

    @staticmethod
    def backward(ctx, dloss, _dlse, _ddenom):
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
