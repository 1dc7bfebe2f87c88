"""Plain-PyTorch twins of the fused ops: the ground truth in tests and the CPU fallback.

They take the same arguments, reject the same inputs and, for a given seed, draw the same
dropout mask as the Triton kernels (see ``_philox``). Arithmetic is fp32, or fp64 for fp64 input.
"""
from __future__ import annotations

import torch

from . import _checks
from ._philox import dropout_uniform


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def dropout_keep_mask(seed: int, shape: torch.Size, p: float, device: torch.device) -> torch.Tensor:
    """Bool mask (True = kept) for ``shape``: element i (row-major) is kept when its uniform
    number (see ``_philox``) exceeds p, exactly as the kernel decides."""
    numel = 1
    for d in shape:
        numel *= d
    uniform = dropout_uniform(seed, numel, device)
    return (uniform > torch.tensor(p, dtype=torch.float32, device=device)).view(shape)


def _channel_view(v: torch.Tensor, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return v.to(dtype).view(1, -1, *([1] * (x.dim() - 2)))


def leaky_relu_dropout(x: torch.Tensor, *, negative_slope: float = 0.2, p: float = 0.0,
                       training: bool = True, seed: int | torch.Tensor | None = None,
                       scale: torch.Tensor | None = None,
                       shift: torch.Tensor | None = None) -> torch.Tensor:
    """``dropout_p(leaky_relu(x * scale[c] + shift[c]))``; see ``ssgan.kernels.leaky_relu_dropout``."""
    check_leaky_relu_dropout_args(x, p, scale, shift)
    dtype = compute_dtype(x.dtype)
    z = x.to(dtype)
    if scale is not None:
        z = z * _channel_view(scale, x, dtype)
    if shift is not None:
        z = z + _channel_view(shift, x, dtype)
    y = torch.where(z > 0, z, z * negative_slope)
    if training and p > 0:
        seed_value = int(_checks.resolve_seed(seed, x.device).item())
        keep = dropout_keep_mask(seed_value, x.shape, p, x.device)
        y = torch.where(keep, y * (1.0 / (1.0 - p)), torch.zeros_like(y))
    return torch.empty_like(x).copy_(y)  # keeps x's memory layout, as the kernel does


def check_leaky_relu_dropout_args(x, p, scale, shift) -> None:
    _checks.check_float_tensor("x", x)
    if x.dim() == 0:
        raise ValueError("x must have at least 1 dimension (N, C, ...), got a 0-d tensor")
    _checks.check_dropout_p(p)
    _checks.check_channel_vector("scale", scale, x)
    _checks.check_channel_vector("shift", shift, x)
    _checks.check_same_device("x", x, scale=scale, shift=shift)


def gan_logits(class_logits: torch.Tensor, *, extra_class: bool = False) -> torch.Tensor:
    """Stable GAN logit per row; see ``ssgan.kernels.gan_logits``."""
    _checks.check_logits("class_logits", class_logits, min_cols=2 if extra_class else 1)
    z = class_logits.to(compute_dtype(class_logits.dtype))
    if extra_class:
        out = torch.logsumexp(z[:, :-1], dim=1) - z[:, -1]
    else:
        out = torch.logsumexp(z, dim=1)
    return out.to(class_logits.dtype)


def masked_cross_entropy(logits: torch.Tensor, target: torch.Tensor,
                         mask: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over rows with mask != 0; see ``ssgan.kernels.masked_cross_entropy``."""
    _checks.check_logits("logits", logits)
    weight = _checks.check_targets(logits, target, mask)
    _checks.check_target_range(target, weight, logits.shape[1])
    z = logits.to(weight.dtype)
    safe_target = torch.where(weight != 0, target.long(), torch.zeros_like(target.long()))
    per_row = torch.logsumexp(z, dim=1) - z.gather(1, safe_target[:, None]).squeeze(1)
    # where, not a product: a masked row's garbage (even inf) must not leak in as 0 * inf.
    per_row = torch.where(weight != 0, weight * per_row, torch.zeros_like(per_row))
    return per_row.sum() / weight.sum().clamp_min(1.0)
