"""Transposed convolutions with few output channels, run on a CPU as sub-pixel convolutions.

oneDNN runs a transposed convolution into a few channels (the generator's last layer, into an
RGB image) far below its usual speed. The same arithmetic, written as an ordinary convolution
to ``stride**2`` times the channels followed by ``pixel_shuffle``, runs faster there. With
many output channels the sub-pixel form is slower, and so is its backward, so only the forward
of a narrow transposed convolution is replaced and its gradients are ATen's own
``convolution_backward`` (docs/cpu-path.md).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ssgan.devices import policy

MAX_NARROW_CHANNELS = 8


def _subpixel_weight(weight: torch.Tensor, stride: int, padding: int
                     ) -> tuple[torch.Tensor, int, int]:
    """(C_in, C_out, k, k) transposed-convolution weight -> the (stride**2 * C_out, C_in, T, T)
    convolution weight whose output channel ``(o * stride + r) * stride + c`` is the output
    phase (r, c) of channel o, and the input padding (left/top, right/bottom) it needs.

    Output row ``stride * i + r`` sums input rows ``j = i - d`` times kernel row
    ``stride * d + r + padding``; the window covers every d any phase uses, and a tap outside
    the kernel reads an appended zero row."""
    k = weight.shape[-1]
    shifts = [(tap - r - padding) // stride for r in range(stride) for tap in range(k)
              if (tap - r - padding) % stride == 0]
    first, last = min(shifts), max(shifts)
    taps = torch.full((stride, last - first + 1), k, dtype=torch.long)
    for r in range(stride):
        for t in range(taps.shape[1]):
            tap = stride * (last - t) + r + padding
            if 0 <= tap < k:
                taps[r, t] = tap
    window = last - first + 1
    w = F.pad(weight, (0, 1, 0, 1))[:, :, taps][:, :, :, :, taps]  # (C_in, C_out, s, T, s, T)
    w = w.permute(1, 2, 4, 0, 3, 5).reshape(weight.shape[1] * stride * stride, weight.shape[0],
                                             window, window)
    return w, last, -first


def subpixel_conv_transpose(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                            stride: int, padding: int) -> torch.Tensor:
    """``F.conv_transpose2d(x, weight, bias, stride, padding, output_padding)`` with the
    output_padding that makes its output exactly ``stride`` times the input, as one convolution
    and a ``pixel_shuffle``. x float (B, C_in, H, W); weight (C_in, C_out, k, k), square;
    returns (B, C_out, stride * H, stride * W), channels-first."""
    w, before, after = _subpixel_weight(weight, stride, padding)
    # the convolution's own (symmetric) padding, then a crop to the one-sided padding's output:
    # a padded copy of x costs more than the rows and columns computed in excess
    pad = max(before, after)
    y = F.conv2d(x, w, None if bias is None else bias.repeat_interleave(stride * stride),
                 padding=pad)
    top, bottom = pad - before, pad - after
    y = y[..., top:y.shape[-2] - bottom, top:y.shape[-1] - bottom]
    return _pixel_shuffle_channels_first(y, stride)


def _pixel_shuffle_channels_first(y: torch.Tensor, stride: int) -> torch.Tensor:
    """``F.pixel_shuffle(y, stride)`` in the channels-first layout of an image, whatever y's.
    ``pixel_shuffle`` keeps a channels-last input's layout, and the image then needs a copy;
    this permuted copy does both in one pass."""
    b, c, h, w = y.shape
    c_out = c // (stride * stride)
    return (y.view(b, c_out, stride, stride, h, w).permute(0, 1, 4, 2, 5, 3)
            .reshape(b, c_out, h * stride, w * stride).contiguous())


def square_size(pair: object) -> int | None:
    """The common value of a (height, width) pair, None for a non-square one (or a string)."""
    return pair[0] if isinstance(pair, tuple) and pair[0] == pair[1] else None


def plain_layer(layer: nn.Module, x: torch.Tensor) -> bool:
    """True when ``layer`` is an ungrouped, undilated, zero-padded layer with a bias, fed a
    batched image: the layers whose arithmetic this module and :mod:`ssgan.conv_grads`
    rewrite."""
    return (x.dim() == 4 and layer.bias is not None and layer.groups == 1
            and layer.dilation == (1, 1) and layer.padding_mode == "zeros")


def autocast_inputs(*tensors: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
    """``tensors`` (None passes through) in the dtype autocast gives a convolution on the first
    one's device, as they are outside autocast: ATen's ``convolution_backward`` needs one dtype
    for all its tensors. The autograd engine casts each gradient back to its input's dtype
    (fp32 master weights get fp32 gradients)."""
    kind = tensors[0].device.type
    if not torch.is_autocast_enabled(kind):
        return tensors
    compute = torch.get_autocast_dtype(kind)
    return tuple(None if t is None else t.to(compute) for t in tensors)


class _NarrowConvTranspose(torch.autograd.Function):
    """A narrow transposed convolution: sub-pixel forward, ATen backward. Under autocast it
    computes in autocast's dtype, as ``layer(x)`` would, and its backward hands every input a
    gradient in that input's own dtype (:func:`autocast_inputs`)."""

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, output_padding):
        x, weight, bias = autocast_inputs(x, weight, bias)
        ctx.save_for_backward(x, weight)
        ctx.geometry = (stride, padding, output_padding)
        with torch.autocast(x.device.type, enabled=False):
            return subpixel_conv_transpose(x, weight, bias, stride, padding)

    @staticmethod
    def backward(ctx, dy):
        x, weight = ctx.saved_tensors
        s, p, op = ctx.geometry
        dx, dw, db = torch.ops.aten.convolution_backward(
            dy.to(x.dtype), x, weight, [weight.shape[1]], [s, s], [p, p], [1, 1], True,
            [op, op], 1, list(ctx.needs_input_grad[:3]))
        return dx, dw, db, None, None, None


def deconv(layer: nn.ConvTranspose2d, x: torch.Tensor) -> torch.Tensor:
    """``layer(x)``: x float (B, C_in, H, W) -> (B, C_out, H', W'). On a CPU, a layer with at
    most ``MAX_NARROW_CHANNELS`` output channels, a bias and a square geometry that upsamples
    exactly by its stride runs its forward as a sub-pixel convolution (the same values up to
    rounding); every other layer, and every GPU, runs ``layer(x)``."""
    k, s, p, op = (square_size(v) for v in (layer.kernel_size, layer.stride, layer.padding,
                                            layer.output_padding))
    if (not policy(x.device).subpixel_deconv or not plain_layer(layer, x)
            or layer.out_channels > MAX_NARROW_CHANNELS or None in (k, s, p, op)
            or k + op - 2 * p != s):
        return layer(x)
    return _NarrowConvTranspose.apply(x, layer.weight, layer.bias, s, p, op)
