"""Convolutions whose gradients oneDNN computes far below its usual speed, with those gradients
computed another way, on a device whose policy says so (a CPU; docs/cpu-path.md):

- the input gradient of a convolution from a few channels (D's first layer, from an image) is
  a transposed convolution into those few channels, which the sub-pixel form runs faster
  (:func:`ssgan.subpixel.subpixel_conv_transpose`);
- the weight gradient of a convolution with a few output positions per image (D's last layer,
  2x2) is one matrix product of the output gradient with the gathered input windows, where
  oneDNN's kernel has too few positions to spread over its threads.

The forward and every other gradient are ATen's. A gradient is computed only when the backward
pass in progress uses it, as ATen's ``convolution_backward`` does: D's fake-batch layers are
differentiated twice per step, for D's loss (weights) and G's (inputs).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ssgan.devices import policy
from ssgan.kernels._private_api import will_engine_execute
from ssgan.subpixel import (MAX_NARROW_CHANNELS, autocast_inputs, plain_layer, square_size,
                            subpixel_conv_transpose)

# output positions per image at or below which the weight gradient is one matrix product
MAX_TINY_POSITIONS = 4


def _rewrites(layer: nn.Conv2d, x: torch.Tensor) -> tuple[bool, bool]:
    """(input gradient as a sub-pixel transposed convolution, weight gradient as one matrix
    product) for ``layer`` on ``x``: which of this module's two gradients apply."""
    k, s, p = (square_size(v) for v in (layer.kernel_size, layer.stride, layer.padding))
    if (not policy(x.device).rewritten_conv_grads or not plain_layer(layer, x)
            or None in (k, s, p) or x.shape[-1] != x.shape[-2]):
        return False, False
    out = (x.shape[-1] + 2 * p - k) // s + 1
    # the sub-pixel form makes exactly stride times its input: the input gradient must be that
    narrow = layer.in_channels <= MAX_NARROW_CHANNELS and x.shape[-1] == s * out
    tiny = out * out <= MAX_TINY_POSITIONS
    return narrow, tiny


def _windows(x: torch.Tensor, kernel: int, stride: int, padding: int, out: int) -> torch.Tensor:
    """The input window of every output position, (B * out * out, kernel * kernel * C), its
    columns ordered (kernel row, kernel column, channel) as a channels-last weight's are."""
    rows = F.pad(x.permute(0, 2, 3, 1), (0, 0, padding, padding, padding, padding))
    rows = rows.contiguous()  # (B, H, W, C): one channel vector per pixel
    sb, sh, sw, sc = rows.stride()
    windows = rows.as_strided((x.shape[0], out, out, kernel, kernel, x.shape[1]),
                              (sb, stride * sh, stride * sw, sh, sw, sc))
    return windows.reshape(-1, kernel * kernel * x.shape[1])


def _weight_grads(dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, stride: int,
                  padding: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The weight and bias gradients of ``conv2d(x, weight, bias, stride, padding)`` from its
    output gradient ``dy``, as one matrix product; the weight's in ``weight``'s layout."""
    c_out, c_in, k = weight.shape[0], weight.shape[1], weight.shape[-1]
    dy_rows = dy.permute(0, 2, 3, 1).reshape(-1, c_out)  # (B * positions, C_out)
    dw = (dy_rows.t() @ _windows(x, k, stride, padding, dy.shape[-1]))
    dw = dw.view(c_out, k, k, c_in).permute(0, 3, 1, 2)  # channels-last (C_out, C_in, k, k)
    if dw.stride() != weight.stride():
        dw = torch.empty_like(weight).copy_(dw)
    return dw, dy_rows.sum(0)


class _Conv2d(torch.autograd.Function):
    """``conv2d(x, weight, bias, stride, padding)`` with this module's gradients where
    ``narrow`` / ``tiny`` say, ATen's elsewhere. Under autocast it computes in autocast's
    dtype, as ``layer(x)`` would, and hands every input a gradient in its own dtype."""

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, narrow, tiny):
        # the nodes the three gradients flow into: the backward asks which the pass runs
        ctx.edges = [t.grad_fn for t in (x, weight, bias)]
        x, weight, bias = autocast_inputs(x, weight, bias)
        ctx.save_for_backward(x, weight)
        ctx.geometry, ctx.rewrites = (stride, padding), (narrow, tiny)
        with torch.autocast(x.device.type, enabled=False):
            return F.conv2d(x, weight, bias, stride, padding)

    @staticmethod
    def backward(ctx, dy):
        x, weight = ctx.saved_tensors
        (s, p), (narrow, tiny) = ctx.geometry, ctx.rewrites
        wanted = [need and will_engine_execute(node)
                  for need, node in zip(ctx.needs_input_grad[:3], ctx.edges)]
        dy = dy.to(x.dtype)
        grads = [None, None, None]
        if wanted[0] and narrow:
            grads[0] = subpixel_conv_transpose(dy, weight, None, s, p)
        if (wanted[1] or wanted[2]) and tiny:
            grads[1], grads[2] = _weight_grads(dy, x, weight, s, p)
        rest = [want and grad is None for want, grad in zip(wanted, grads)]
        if any(rest):
            aten = torch.ops.aten.convolution_backward(
                dy, x, weight, [weight.shape[0]], [s, s], [p, p], [1, 1], False, [0, 0], 1,
                rest)
            grads = [aten_grad if use else grad for grad, aten_grad, use
                     in zip(grads, aten, rest)]
        # the matrix product gives the weight's and the bias's gradients together
        grads = [grad if want else None for grad, want in zip(grads, wanted)]
        return (*grads, None, None, None, None)


def conv(layer: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """``layer(x)``: x float (B, C_in, H, W) -> (B, C_out, H', W'). Where the device's policy
    rewrites convolution gradients and ``layer`` is a square, ungrouped, undilated one with a
    bias, a narrow input (at most ``MAX_NARROW_CHANNELS`` channels) takes its gradient as a
    sub-pixel transposed convolution and a tiny output (at most ``MAX_TINY_POSITIONS``
    positions) gives the weight gradient as one matrix product (the same values up to
    rounding); every other layer, and every call without grad mode (evaluation, export), runs
    ``layer(x)``."""
    narrow, tiny = _rewrites(layer, x) if torch.is_grad_enabled() else (False, False)
    if not (narrow or tiny):  # without grad mode there is no gradient to compute another way
        return layer(x)
    # aliases (views with the same strides) of what needs a gradient: nodes of their own, which
    # the backward can ask the engine about (it answers for no leaf under torch.autograd.grad)
    x, weight, bias = (t[...] if t.requires_grad else t for t in (x, layer.weight, layer.bias))
    return _Conv2d.apply(x, weight, bias, layer.stride[0], layer.padding[0], narrow, tiny)
