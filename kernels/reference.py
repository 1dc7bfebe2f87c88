"""Plain-PyTorch twins of the fused ops: the ground truth in tests, and the math of the CPU path.

The public twins (:func:`leaky_relu_dropout`, :func:`gan_logits`, :func:`masked_cross_entropy`)
take the same arguments, reject the same inputs and, for a given seed, draw the same dropout
mask as the Triton kernels (see ``_philox``); autograd differentiates them. The ``*_forward`` /
``*_backward`` pairs are the same math split the way the kernels split it (the backward
regenerates the dropout mask from the seed; nothing but the inputs and one log-sum-exp per row
is saved): the CPU backend compiles exactly these with Inductor. Arithmetic is fp32, or fp64
for fp64 input.
"""
from __future__ import annotations

import math

import torch

from . import _checks
from ._philox import dropout_uniform, dropout_uniform_channels_last


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def dropout_keep_mask(seed: torch.Tensor, shape: torch.Size, p: float,
                      device: torch.device, channels_last: bool = False) -> torch.Tensor:
    """Bool mask (True = kept) for ``shape``: element i (row-major) is kept when its uniform
    number (see ``_philox``) exceeds p, exactly as the kernel decides. seed: one-element int64
    tensor. ``channels_last``: the same mask, laid out channels-last where ``shape`` (N, C, ...)
    has a multiple of 4 positions per channel (the layout then lets the draw follow memory)."""
    numel = 1
    for d in shape:
        numel *= d
    if channels_last and len(shape) > 2 and numel and (numel // (shape[0] * shape[1])) % 4 == 0:
        uniform = dropout_uniform_channels_last(seed, shape, device)
    else:
        uniform = dropout_uniform(seed, numel, device).view(shape)
    return uniform > torch.tensor(p, dtype=torch.float32, device=device)


# ---------------------------------------------------------------- leaky-ReLU + dropout

def is_channels_last(x: torch.Tensor) -> bool:
    """True when channels are the fastest-moving dim (every contiguous 2-D tensor qualifies).
    A tensor that is both layouts at once (one channel, or one position) counts as
    channels-last only when it has at least as many channels as positions, so that the
    kernels' tiles run along the longer axis."""
    if x.dim() <= 2:
        return x.is_contiguous()
    if not has_channels_last_strides(x):
        return False
    return not x.is_contiguous() or x.shape[1] >= math.prod(x.shape[2:])


def has_channels_last_strides(x: torch.Tensor) -> bool:
    """Whether x (N, C, ...) is laid out with channels fastest, then the other dims in order,
    size-1 dims ignored: ``x.movedim(1, -1).is_contiguous()``. A 4-D tensor reads the flag
    PyTorch keeps for it, far cheaper than building the view (the CPU path asks once or twice
    per op call)."""
    if x.dim() == 4 and x.numel():
        return x.is_contiguous(memory_format=torch.channels_last)
    return x.movedim(1, -1).is_contiguous()


def is_native_layout(t: torch.Tensor) -> bool:
    """Whether t is in one of the two layouts the fused kernels run natively: contiguous
    (channels-first) or channels-last."""
    return t.is_contiguous() or is_channels_last(t)


def native_layout(t: torch.Tensor, channels_last: bool | None = None) -> torch.Tensor:
    """``t`` in a layout the fused activation's kernels read (channels-first or channels-last,
    or the one ``channels_last`` asks for); a copy only when it has neither."""
    if channels_last is None:
        return t if is_native_layout(t) else t.contiguous()
    if channels_last and t.dim() > 2:
        if has_channels_last_strides(t):
            return t
        return t.movedim(1, -1).contiguous().movedim(-1, 1)
    return t.contiguous()


def output_like(x: torch.Tensor, swap_layout: bool = False) -> torch.Tensor:
    """An empty output of x's shape and dtype in the layout every path returns: x's own when
    x is contiguous or channels-last, contiguous for any other strides; with ``swap_layout``
    (x 4-D, in a native layout) the other of the two."""
    if swap_layout:
        return torch.empty_like(x, memory_format=torch.contiguous_format if is_channels_last(x)
                                else torch.channels_last)
    return torch.empty_like(x, memory_format=torch.preserve_format if is_native_layout(x)
                            else torch.contiguous_format)


def _channel_view(v: torch.Tensor, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return v.to(dtype).view(1, -1, *([1] * (x.dim() - 2)))


def _affine(x: torch.Tensor, scale: torch.Tensor | None, shift: torch.Tensor | None
            ) -> torch.Tensor:
    z = x.to(compute_dtype(x.dtype))
    if scale is not None:
        z = z * _channel_view(scale, x, z.dtype)
    if shift is not None:
        z = z + _channel_view(shift, x, z.dtype)
    return z


def _dropout(t: torch.Tensor, seed: torch.Tensor | None, p: float) -> torch.Tensor:
    """Inverted dropout of ``t`` with the seed's mask: kept values times 1 / (1 - p), dropped
    ones exactly 0. p == 0 returns ``t`` (no seed needed)."""
    if p == 0:
        return t
    keep = dropout_keep_mask(seed, t.shape, p, t.device,
                             channels_last=t.dim() > 2 and not t.is_contiguous()
                             and has_channels_last_strides(t))
    return torch.where(keep, t * (1.0 / (1.0 - p)), 0.0)


def leaky_relu_dropout_forward(x: torch.Tensor, scale: torch.Tensor | None,
                               shift: torch.Tensor | None, seed: torch.Tensor | None,
                               negative_slope: float, p: float,
                               out: torch.Tensor | None = None) -> torch.Tensor:
    """The op's forward without checks: x (N, C, ...), seed a one-element int64 tensor (None
    when p == 0), p the drop probability already set to 0 outside training. Writes y into
    ``out`` (x's shape; its dtype and memory layout are the caller's choice; x's when None)
    and returns it. The compiled CPU path passes None: an output allocated inside the compiled
    graph is written by the fused loop itself, where one passed in costs an extra copy pass."""
    z = _affine(x, scale, shift)
    out = torch.empty_like(x) if out is None else out
    return out.copy_(_dropout(torch.where(z > 0, z, z * negative_slope), seed, p))


def _channel_sum(t: torch.Tensor) -> torch.Tensor:
    """Sums of t (N, C, ...) over every dim but 1, in two stages: over each (sample, channel)'s
    positions, then over the samples. Compiled, one reduction over (N, ...) per channel takes a
    pass of its own over memory, and summing over the samples first was slower at every shape
    the models use (docs/cpu-path.md)."""
    if t.dim() > 2:
        t = t.flatten(2).sum(2)
    return t.sum(0)


def leaky_relu_dropout_backward(dy: torch.Tensor, x: torch.Tensor, scale: torch.Tensor | None,
                                shift: torch.Tensor | None, seed: torch.Tensor | None,
                                negative_slope: float, p: float, affine_grads: bool
                                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of :func:`leaky_relu_dropout_forward` from ``dy``, regenerating the mask from
    the seed. Returns dx (x's shape and memory layout), and dscale, dshift (C,) in scale's /
    shift's dtype (empty where the op has no scale / shift or
    ``affine_grads`` is False)."""
    z = _affine(x, scale, shift)
    dy = dy.to(z.dtype)
    dz = _dropout(torch.where(z > 0, dy, dy * negative_slope), seed, p)
    # dx before the sums: Inductor fuses a loop into an earlier one's, not a later one's, so
    # this order lets the per-(sample, channel) sums of a channels-first x share dx's pass
    # over memory (and its one Philox draw)
    dx = dz * _channel_view(scale, x, dz.dtype) if scale is not None else dz
    dx = torch.empty_like(x).copy_(dx)
    dscale = _channel_sum(dz * x.to(dz.dtype)).to(scale.dtype) \
        if affine_grads and scale is not None else x.new_empty(0)
    dshift = _channel_sum(dz).to(shift.dtype) if affine_grads and shift is not None \
        else x.new_empty(0)
    return dx, dscale, dshift


def leaky_relu_dropout(x: torch.Tensor, *, negative_slope: float = 0.2, p: float = 0.0,
                       training: bool = True, seed: int | torch.Tensor | None = None,
                       scale: torch.Tensor | None = None, shift: torch.Tensor | None = None,
                       memory_format: torch.memory_format | None = None) -> torch.Tensor:
    """``dropout_p(leaky_relu(x * scale[c] + shift[c]))``; see
    ``ssgan.kernels.leaky_relu_dropout``."""
    check_leaky_relu_dropout_args(x, p, scale, shift, memory_format)
    drop = float(p) if training else 0.0
    seed_tensor = _checks.resolve_seed(seed, x.device) if drop > 0 else None
    return leaky_relu_dropout_forward(x, scale, shift, seed_tensor, negative_slope, drop,
                                      output_like(x, swaps_layout(x, memory_format)))


def swaps_layout(x: torch.Tensor, memory_format: torch.memory_format | None) -> bool:
    """Whether an output of x in ``memory_format`` (None: x's own) takes the other native
    layout than the one x runs in (:func:`native_layout`). Never where the two coincide (one
    channel or one position)."""
    if memory_format is None or x.dim() != 4 or x.shape[1] == 1 or x.shape[2] * x.shape[3] == 1:
        return False
    return (memory_format == torch.channels_last) != is_channels_last(x)


def check_memory_format(memory_format, x: torch.Tensor) -> None:
    """A ValueError unless ``memory_format`` is an output layout the fused ops write for x."""
    if memory_format not in (None, torch.contiguous_format, torch.channels_last) or (
            memory_format == torch.channels_last and x.dim() != 4):
        raise ValueError("memory_format must be None (x's layout), torch.contiguous_format or, "
                         f"for a 4-D x, torch.channels_last; got {memory_format} for a "
                         f"{x.dim()}-D x")


def check_leaky_relu_dropout_args(x, p, scale, shift, memory_format=None) -> None:
    _checks.check_float_tensor("x", x)
    if x.dim() == 0:
        raise ValueError("x must have at least 1 dimension (N, C, ...), got a 0-d tensor")
    check_memory_format(memory_format, x)
    _checks.check_dropout_p(p)
    _checks.check_channel_vector("scale", scale, x)
    _checks.check_channel_vector("shift", shift, x)
    _checks.check_same_device("x", x, scale=scale, shift=shift)


# ---------------------------------------------------------------- GAN-logit head

def gan_logits_forward(class_logits: torch.Tensor, extra_class: bool
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """(out, lse): out (B,) in the input's dtype, lse (B,) the compute-dtype log-sum-exp of
    the real-class columns, which the backward reuses."""
    z = class_logits.to(compute_dtype(class_logits.dtype))
    if extra_class:
        lse = torch.logsumexp(z[:, :-1], dim=1)
        out = lse - z[:, -1]
    else:
        lse = out = torch.logsumexp(z, dim=1)
    # a copy even when the dtypes agree: an op's two outputs must not share memory
    return out.to(class_logits.dtype, copy=True), lse


def gan_logits_backward(dout: torch.Tensor, class_logits: torch.Tensor, lse: torch.Tensor,
                        extra_class: bool) -> torch.Tensor:
    """d out / d class_logits times ``dout``: ``dout * softmax`` over the real columns, and
    ``-dout`` for the fake column. Returns (B, K[+1]) in the input's dtype."""
    z = class_logits.to(lse.dtype)
    g = dout.to(lse.dtype)[:, None]
    dx = g * torch.exp(z - lse[:, None])
    if extra_class:
        is_fake = torch.arange(z.shape[1], device=z.device) == z.shape[1] - 1
        dx = torch.where(is_fake, -g, dx)
    return dx.to(class_logits.dtype).contiguous()


def gan_logits(class_logits: torch.Tensor, *, extra_class: bool = False) -> torch.Tensor:
    """Stable GAN logit per row; see ``ssgan.kernels.gan_logits``."""
    _checks.check_logits("class_logits", class_logits, min_cols=2 if extra_class else 1)
    return gan_logits_forward(class_logits, extra_class)[0]


# ---------------------------------------------------------------- masked cross-entropy

def _labeled_logits(logits: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The logits in the weights' dtype with unlabeled rows zeroed, so that whatever they hold
    (even inf or nan) reaches neither the loss nor, through autograd, the gradient."""
    return torch.where(weight[:, None] != 0, logits.to(weight.dtype), 0.0)


def _safe_target(target: torch.Tensor, weight: torch.Tensor, num_classes: int) -> torch.Tensor:
    in_range = (weight != 0) & (target >= 0) & (target < num_classes)
    return torch.where(in_range, target.long(), 0)


def masked_cross_entropy_forward(logits: torch.Tensor, target: torch.Tensor,
                                 weight: torch.Tensor
                                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, lse, denom, first_bad) for logits (B, C), int target (B,) and float weights (B,)
    in the compute dtype: the 0-dim loss, each row's log-sum-exp (B,), the 0-dim divisor
    ``max(1, sum w)``, and the first labeled row whose target is outside [0, C) (B if none),
    which the caller turns into an error."""
    batch, num_classes = logits.shape
    z = _labeled_logits(logits, weight)
    lse = torch.logsumexp(z, dim=1)
    per_row = lse - z.gather(1, _safe_target(target, weight, num_classes)[:, None]).squeeze(1)
    denom = weight.sum().clamp_min(1.0)
    loss = torch.where(weight != 0, weight * per_row, 0.0).sum() / denom
    bad = (weight != 0) & ((target < 0) | (target >= num_classes))
    rows = torch.arange(batch, device=logits.device)
    first_bad = torch.where(bad, rows, batch).amin() if batch else rows.new_tensor(batch)
    return loss, lse, denom, first_bad


def masked_cross_entropy_backward(dloss: torch.Tensor, denom: torch.Tensor,
                                  logits: torch.Tensor, target: torch.Tensor,
                                  weight: torch.Tensor, lse: torch.Tensor) -> torch.Tensor:
    """``dloss * w_i / denom * (softmax_i - onehot(target_i))`` on labeled rows, exactly 0 on
    the others. Returns (B, C) in the logits' dtype."""
    num_classes = logits.shape[1]
    z = _labeled_logits(logits, weight)
    one_hot = torch.arange(num_classes, device=z.device) == \
        _safe_target(target, weight, num_classes)[:, None]
    row_scale = (weight * (dloss.to(weight.dtype) / denom))[:, None]
    dx = torch.where(weight[:, None] != 0,
                     row_scale * (torch.exp(z - lse[:, None]) - one_hot.to(z.dtype)), 0.0)
    return dx.to(logits.dtype).contiguous()


def masked_cross_entropy(logits: torch.Tensor, target: torch.Tensor,
                         mask: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over rows with mask != 0; see ``ssgan.kernels.masked_cross_entropy``."""
    _checks.check_logits("logits", logits)
    weight = _checks.check_targets(logits, target, mask)
    _checks.check_target_range(target, weight, logits.shape[1])
    return masked_cross_entropy_forward(logits, target, weight)[0]


# ---------------------------------------------------------------- batch norm + leaky-ReLU + dropout

def _spans(bounds: tuple[int, ...] | None, rows) -> list[tuple]:
    """(first, end) rows of each segment; ``bounds`` None is one segment of every row (a graph
    the compiled CPU path then traces once for every batch size)."""
    return list(zip((0, *bounds[:-1]), bounds)) if bounds else [(0, rows)]


def segment_of_rows(bounds: tuple[int, ...] | None, device: torch.device) -> torch.Tensor | None:
    """int64 (N,): the segment of each row, for segment ends ``bounds`` (the last one is N);
    None for one segment."""
    if bounds is None:
        return None
    sizes = torch.tensor([end - start for start, end in _spans(bounds, bounds[-1])],
                         device=device)
    return torch.repeat_interleave(torch.arange(len(bounds), device=device), sizes,
                                   output_size=bounds[-1])


def _per_row(v: torch.Tensor, segment: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
    """(S, C) per-(segment, channel) values broadcast against x (N, C, ...)."""
    shape = (1, x.shape[1], *([1] * (x.dim() - 2)))
    if segment is None:
        return v[0].view(shape)
    return v[segment].view(x.shape[0], *shape[1:])


def batch_norm_statistics(x: torch.Tensor, bounds: tuple[int, ...] | None, eps: float
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-(segment, channel) batch mean, biased variance and 1/sqrt(var + eps), each (S, C)
    in the compute dtype, for x (N, C, ...) whose segment s is rows [bounds[s-1], bounds[s])
    (None: one segment). ``var_mean`` centres before squaring, so a mean far from 0 costs no
    precision."""
    z = x.to(compute_dtype(x.dtype))
    dims = [0, *range(2, x.dim())]
    var, mean = zip(*(torch.var_mean(z[a:b], dims, correction=0)
                      for a, b in _spans(bounds, x.shape[0])))
    var, mean = torch.stack(var), torch.stack(mean)
    return mean, var, torch.rsqrt(var + eps)


def _normalized(x, weight, bias, mean, rstd, segment):
    """(x - mean) * (weight * rstd) + bias, per row's segment, in the compute dtype: the
    centring comes first, as in ATen's batch norm, so |mean| >> std costs nothing."""
    z = x.to(mean.dtype)
    scale = _per_row(rstd * weight.to(mean.dtype), segment, x)
    return (z - _per_row(mean, segment, x)) * scale + _channel_view(bias, x, mean.dtype)


def batch_norm_leaky_relu_dropout_forward(x: torch.Tensor, weight: torch.Tensor,
                                          bias: torch.Tensor, bounds: tuple[int, ...],
                                          eps: float, seed: torch.Tensor | None,
                                          negative_slope: float, p: float,
                                          swap_layout: bool = False
                                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(y, stats, var): y in x's dtype and layout (the other native one where
    ``swap_layout``); stats (2, S, C) the per-segment batch mean and 1/sqrt(var + eps) that the
    backward reuses; var (S, C) the biased variance (for the running statistics). Compute
    dtype throughout."""
    mean, var, rstd = batch_norm_statistics(x, bounds, eps)
    z = _normalized(x, weight, bias, mean, rstd, segment_of_rows(bounds, x.device))
    y = (output_like(x, True) if swap_layout else torch.empty_like(x)).copy_(
        _dropout(torch.where(z > 0, z, z * negative_slope), seed, p))
    return y, torch.stack([mean, rstd]), var


def batch_norm_leaky_relu_dropout_backward(dy: torch.Tensor, x: torch.Tensor,
                                           weight: torch.Tensor, bias: torch.Tensor,
                                           stats: torch.Tensor, bounds: tuple[int, ...],
                                           seed: torch.Tensor | None, negative_slope: float,
                                           p: float
                                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dx, dweight, dbias) of the forward with batch statistics, regenerating the mask:
    ``dx = weight * rstd * (dz - mean_seg(dz) - xhat * mean_seg(dz * xhat))``."""
    mean, rstd = stats[0], stats[1]
    segment = segment_of_rows(bounds, x.device)
    z = _normalized(x, weight, bias, mean, rstd, segment)
    dy = dy.to(z.dtype)
    dz = _dropout(torch.where(z > 0, dy, dy * negative_slope), seed, p)
    xhat = (x.to(z.dtype) - _per_row(mean, segment, x)) * _per_row(rstd, segment, x)
    dims = [0, *range(2, x.dim())]
    spans = _spans(bounds, x.shape[0])
    sums = torch.stack([torch.stack([dz[a:b].sum(dims), (dz[a:b] * xhat[a:b]).sum(dims)])
                        for a, b in spans])           # (S, 2, C)
    positions = x[0, 0].numel() if x.shape[0] else 1
    means = torch.stack([sums[i] / ((b - a) * positions) for i, (a, b) in enumerate(spans)])
    scale = _per_row(rstd * weight.to(z.dtype), segment, x)
    dx = scale * (dz - _per_row(means[:, 0], segment, x)
                  - xhat * _per_row(means[:, 1], segment, x))
    dx = torch.empty_like(x).copy_(dx)
    return dx, sums[:, 1].sum(0).to(weight.dtype), sums[:, 0].sum(0).to(bias.dtype)


def update_running_statistics(running_mean: torch.Tensor, running_var: torch.Tensor,
                              mean: torch.Tensor, var: torch.Tensor, count: int,
                              momentum: float) -> None:
    """ATen's update from one segment's batch mean and biased variance over ``count`` values:
    both move by ``momentum``, the variance towards its unbiased estimate."""
    with torch.no_grad():
        running_mean.lerp_(mean.to(running_mean.dtype), momentum)
        running_var.lerp_((var * (count / max(1, count - 1))).to(running_var.dtype), momentum)


def batch_norm_leaky_relu_dropout(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, *,
                                  segments: tuple[int, ...] | None = None,
                                  running_mean: torch.Tensor | None = None,
                                  running_var: torch.Tensor | None = None,
                                  momentum: float = 0.1, eps: float = 1e-5,
                                  negative_slope: float = 0.2, p: float = 0.0,
                                  training: bool = True,
                                  seed: int | torch.Tensor | None = None,
                                  memory_format: torch.memory_format | None = None
                                  ) -> torch.Tensor:
    """Batch norm with per-segment statistics, leaky ReLU, dropout; see
    ``ssgan.kernels.batch_norm_leaky_relu_dropout``."""
    bounds = check_batch_norm_args(x, weight, bias, segments, running_mean, running_var, p,
                                   momentum, memory_format)
    drop = float(p) if training else 0.0
    seed_tensor = _checks.resolve_seed(seed, x.device) if drop > 0 else None
    y, stats, var = batch_norm_leaky_relu_dropout_forward(x, weight, bias, bounds, eps,
                                                          seed_tensor, negative_slope, drop)
    if running_mean is not None:
        update_running_statistics(running_mean, running_var, stats[0, 0], var[0],
                                  bounds[0] * (x[0, 0].numel() if x.shape[0] else 1), momentum)
    out = output_like(x, swaps_layout(x, memory_format))
    return y if y.stride() == out.stride() else out.copy_(y)


def check_batch_norm_args(x, weight, bias, segments, running_mean, running_var, p,
                          momentum, memory_format=None) -> tuple[int, ...]:
    """Checks the BatchNorm block's arguments; returns the segments' end rows."""
    _checks.check_float_tensor("x", x)
    if x.dim() < 2:
        raise ValueError(f"x must be (N, C, ...), got shape {tuple(x.shape)}")
    check_memory_format(memory_format, x)
    for name, v in (("weight", weight), ("bias", bias)):
        if v is None:
            raise ValueError(f"{name} must be a (C,) tensor, got None")
        _checks.check_channel_vector(name, v, x)
    if (running_mean is None) != (running_var is None):
        raise ValueError("pass both running_mean and running_var, or neither")
    _checks.check_channel_vector("running_mean", running_mean, x)
    _checks.check_channel_vector("running_var", running_var, x)
    _checks.check_same_device("x", x, weight=weight, bias=bias, running_mean=running_mean,
                              running_var=running_var)
    _checks.check_dropout_p(p)
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"momentum must be in [0, 1], got {momentum}")
    return _checks.segment_bounds(segments, x.shape[0])


# ---------------------------------------------------------------- the GAN loss head

HEAD_OUTPUTS = ("supervised", "bce_real", "bce_fake", "entropy", "hits", "labeled")


def _head_rows(segments: tuple[int, ...], rows: int, device: torch.device):
    """Bool (B,) masks of the real and fake rows, and the first supervised row: the third
    segment when there is one, else the real segment."""
    index = torch.arange(rows, device=device)
    real, fake = index < segments[0], (index >= segments[0]) & (index < segments[0] + segments[1])
    return real, fake, (segments[0] + segments[1] if len(segments) == 3 else 0)


def _supervised_full(values: torch.Tensor, start: int, rows: int, fill) -> torch.Tensor:
    """A supervised-segment vector placed at its rows of a (B,) vector, ``fill`` elsewhere."""
    full = values.new_full((rows,), fill)
    return torch.cat([full[:start], values, full[start + values.shape[0]:]])


def gan_loss_head_forward(class_logits: torch.Tensor, target: torch.Tensor,
                          weight: torch.Tensor, segments: tuple[int, ...], extra_class: bool
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """(out, first_bad): out (6,) in the compute dtype, the values of :data:`HEAD_OUTPUTS`;
    first_bad the first supervised row (counted in the supervised segment) whose target is
    outside [0, K+extra) where its weight is not 0, or that segment's size if none."""
    z = class_logits.to(compute_dtype(class_logits.dtype))
    rows, cols = z.shape
    k = cols - int(extra_class)
    real, fake, start = _head_rows(segments, rows, z.device)
    lse_k = torch.logsumexp(z[:, :k], dim=1)
    gan = lse_k - z[:, -1] if extra_class else lse_k
    bce_real = torch.where(real, _softplus(-gan), 0.0).sum() / segments[0]
    bce_fake = torch.where(fake, _softplus(gan), 0.0).sum() / segments[1]
    log_p = z[:, :k] - lse_k[:, None]
    entropy = torch.where(real, -(log_p.exp() * log_p).sum(1), 0.0).sum() / segments[0]
    sup = z[start:start + target.shape[0]]
    w = weight.to(z.dtype)
    safe = _safe_target(target, w, cols)
    ce = torch.logsumexp(sup, dim=1) - sup.gather(1, safe[:, None]).squeeze(1)
    labeled = w.sum()
    supervised = torch.where(w != 0, w * ce, 0.0).sum() / labeled.clamp_min(1.0)
    hits = ((sup[:, :k].argmax(1) == target) & (w != 0)).sum().to(z.dtype)
    bad = (w != 0) & ((target < 0) | (target >= cols))
    sup_rows = torch.arange(target.shape[0], device=z.device)
    first_bad = torch.where(bad, sup_rows, target.shape[0]).amin() if target.shape[0] \
        else sup_rows.new_tensor(0)
    return torch.stack([supervised, bce_real, bce_fake, entropy, hits, labeled]), first_bad


def _softplus(t: torch.Tensor) -> torch.Tensor:
    """log(1 + exp(t)) without overflow."""
    return t.clamp_min(0) + torch.log1p(torch.exp(-t.abs()))


def gan_loss_head_backward(dout: torch.Tensor, out: torch.Tensor, class_logits: torch.Tensor,
                           target: torch.Tensor, weight: torch.Tensor,
                           segments: tuple[int, ...], extra_class: bool) -> torch.Tensor:
    """d(dout . out[:4]) / d class_logits, (B, K[+1]) in the logits' dtype: the hits and the
    labeled weight are counts, without a gradient."""
    z = class_logits.to(out.dtype)
    rows, cols = z.shape
    k = cols - int(extra_class)
    g = dout.to(out.dtype)
    real, fake, start = _head_rows(segments, rows, z.device)
    lse_k = torch.logsumexp(z[:, :k], dim=1)
    gan = lse_k - z[:, -1] if extra_class else lse_k
    p_k = torch.exp(z[:, :k] - lse_k[:, None])
    # d loss / d gan logit, then through lse(real columns) - fake column
    dgan = (torch.where(real, -torch.sigmoid(-gan), 0.0) * (g[1] / segments[0])
            + torch.where(fake, torch.sigmoid(gan), 0.0) * (g[2] / segments[1]))
    dz_k = dgan[:, None] * p_k
    # entropy of softmax(z_k): dH/dz_j = -p_j (log p_j + H)
    log_p = z[:, :k] - lse_k[:, None]
    h = -(p_k * log_p).sum(1)
    dz_k = dz_k + torch.where(real[:, None], -p_k * (log_p + h[:, None]), 0.0) * (
        g[3] / segments[0])
    dz = torch.cat([dz_k, -dgan[:, None]], 1) if extra_class else dz_k
    # the masked cross-entropy over every column, on the supervised rows
    w = weight.to(z.dtype)
    row_w = _supervised_full(w * (g[0] / out[5].clamp_min(1.0)), start, rows, 0.0)
    row_t = _supervised_full(_safe_target(target, w, cols), start, rows, 0)
    one_hot = torch.arange(cols, device=z.device) == row_t[:, None]
    lse_all = torch.logsumexp(z, dim=1)
    dce = row_w[:, None] * (torch.exp(z - lse_all[:, None]) - one_hot.to(z.dtype))
    dz = dz + torch.where(row_w[:, None] != 0, dce, 0.0)
    return dz.to(class_logits.dtype).contiguous()


def gan_loss_head(class_logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, *,
                  segments: tuple[int, ...], extra_class: bool = False) -> torch.Tensor:
    """The step's losses in one op; see ``ssgan.kernels.gan_loss_head``."""
    weight = check_gan_loss_head_args(class_logits, target, mask, segments, extra_class)
    _checks.check_target_range(target, weight, class_logits.shape[1])
    return gan_loss_head_forward(class_logits, target, weight, tuple(segments), extra_class)[0]


def check_gan_loss_head_args(class_logits, target, mask, segments, extra_class) -> torch.Tensor:
    """Checks the loss head's arguments; returns the supervised rows' float weights."""
    _checks.check_logits("class_logits", class_logits, min_cols=2 if extra_class else 1)
    rows = class_logits.shape[0]
    if (not isinstance(segments, (tuple, list)) or len(segments) not in (2, 3)
            or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in segments)
            or sum(segments) != rows):
        raise ValueError(f"segments must be (real, fake) or (real, fake, labeled) positive row "
                         f"counts summing to class_logits' {rows} rows, got {segments!r}")
    supervised = segments[2] if len(segments) == 3 else segments[0]
    return _checks.check_targets(class_logits[:supervised], target, mask)


# ---------------------------------------------------------------- feature matching

def check_feature_matching_args(real: object, fake: object) -> None:
    _checks.check_float_tensor("features_real", real, ndim=2)
    _checks.check_float_tensor("features_fake", fake, ndim=2)
    if real.shape[1] != fake.shape[1] or real.dtype != fake.dtype:
        raise ValueError(f"features_real and features_fake must have the same feature count "
                         f"and dtype, got {tuple(real.shape)} {real.dtype} and "
                         f"{tuple(fake.shape)} {fake.dtype}")
    if real.shape[0] == 0 or fake.shape[0] == 0 or real.shape[1] == 0:
        raise ValueError(f"feature matching needs at least one row and one feature in each "
                         f"input, got {tuple(real.shape)} and {tuple(fake.shape)}")
    _checks.check_same_device("features_real", real, features_fake=fake)


def feature_matching_forward(real: torch.Tensor, fake: torch.Tensor
                             ) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, diff) in the compute dtype: diff (F,) the mean of real's rows minus the mean of
    fake's, loss (a 0-dim tensor) the mean of |diff|."""
    dtype = compute_dtype(real.dtype)
    diff = real.to(dtype).mean(0) - fake.to(dtype).mean(0)
    return diff.abs().mean(), diff


def feature_matching_backward(dloss: torch.Tensor, diff: torch.Tensor, real: torch.Tensor,
                              fake: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(d real, d fake) of ``dloss * loss`` in the inputs' dtype: every real row gets
    dloss * sign(diff) / (F * R), every fake row the negative over Q (sign(0) = 0, as
    torch.abs's gradient)."""
    g = dloss.to(diff.dtype) * torch.sign(diff) / diff.shape[0]
    d_real = torch.empty(real.shape, dtype=real.dtype, device=real.device)
    d_fake = torch.empty(fake.shape, dtype=fake.dtype, device=fake.device)
    return (d_real.copy_((g / real.shape[0]).expand(real.shape)),
            d_fake.copy_((-g / fake.shape[0]).expand(fake.shape)))


def feature_matching(features_real: torch.Tensor, features_fake: torch.Tensor) -> torch.Tensor:
    """The feature-matching loss; see ``ssgan.kernels.feature_matching``."""
    check_feature_matching_args(features_real, features_fake)
    return feature_matching_forward(features_real, features_fake)[0]


# ---------------------------------------------------------------- mixed-precision Adam

def mixed_precision_adam_(params: list[torch.Tensor], grads: list[torch.Tensor],
                          exp_avgs: list[torch.Tensor], exp_avg_sqs: list[torch.Tensor],
                          copies: list[torch.Tensor], step: torch.Tensor, lr: torch.Tensor,
                          beta1: float, beta2: float, eps: float) -> None:
    """PyTorch's fused Adam update (no weight decay, no AMSGrad) in fp32, each gradient
    widened to fp32, each updated parameter also written into its copy; see
    ``ssgan.kernels.mixed_precision_adam_``."""
    with torch.no_grad():
        count = step.reshape(()).float()
        step_size = lr.reshape(()).float() / (1 - beta1 ** count)
        bias_correction2_sqrt = (1 - beta2 ** count).sqrt()
        for param, grad, exp_avg, exp_avg_sq, copy in zip(params, grads, exp_avgs, exp_avg_sqs,
                                                          copies):
            grad = grad.float()
            exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
            exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            param.sub_(step_size * exp_avg / (exp_avg_sq.sqrt() / bias_correction2_sqrt + eps))
            if copy is not param:
                copy.copy_(param)
