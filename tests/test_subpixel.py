"""Narrow transposed convolutions on a CPU: the sub-pixel form equals ATen's, and the layers
that use it give layer(x)'s values and gradients."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ssgan.kernels._private_api import TorchDispatchMode
from ssgan.subpixel import MAX_NARROW_CHANNELS, deconv, subpixel_conv_transpose

from helpers import gradcheck_layer_call


def _fresh(layer: nn.Module, dtype=torch.float32) -> nn.Module:
    with torch.no_grad():  # weights well away from the default init's small scale
        for p in layer.parameters():
            p.normal_()
    return layer.to(dtype)


@pytest.mark.parametrize("c_in,c_out,k,s,p,op,size", [
    (32, 3, 5, 2, 2, 1, 16),   # the generator's last layer
    (64, 3, 3, 2, 1, 1, 16),
    (8, 2, 4, 2, 1, 0, 5), (6, 1, 3, 1, 1, 0, 7), (4, 3, 6, 3, 2, 1, 4), (5, 2, 2, 2, 0, 0, 3)])
def test_subpixel_conv_transpose_equals_aten(c_in, c_out, k, s, p, op, size):
    w = torch.randn(c_in, c_out, k, k, dtype=torch.float64)
    b = torch.randn(c_out, dtype=torch.float64)
    x = torch.randn(2, c_in, size, size + 1, dtype=torch.float64)
    torch.testing.assert_close(subpixel_conv_transpose(x, w, b, s, p),
                               F.conv_transpose2d(x, w, b, s, p, op), rtol=1e-12, atol=1e-12)


def _forward_convolutions(fn) -> tuple[torch.Tensor, list[bool]]:
    """fn()'s output, and the ``transposed`` flag of each ATen convolution its forward ran."""
    flags = []

    class Log(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func is torch.ops.aten.convolution.default:
                flags.append(bool(args[6]))
            return func(*args, **(kwargs or {}))
    with Log():
        out = fn()
    return out, flags


def _check_layer(run, layer, x, dy):
    ours, flags = _forward_convolutions(lambda: run(layer, x))
    theirs = layer(x)
    assert flags == [False]  # the sub-pixel form: one ordinary convolution, no transposed one
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
    params = [x, layer.weight, layer.bias]
    for a, b in zip(torch.autograd.grad(ours, params, dy), torch.autograd.grad(theirs, params, dy)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("c_in,c_out,size", [(32, 3, 16), (16, 1, 4), (5, 2, 7), (8, 8, 3)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_narrow_deconv_equals_the_layer(c_in, c_out, size, channels_last):
    layer = _fresh(nn.ConvTranspose2d(c_in, c_out, 5, 2, padding=2, output_padding=1),
                   torch.float64)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(3, c_in, size, size + 2, dtype=torch.float64).contiguous(memory_format=fmt)
    _check_layer(deconv, layer, x.requires_grad_(),
                 torch.randn(3, c_out, 2 * size, 2 * size + 4, dtype=torch.float64))


def test_gradcheck():
    layer = _fresh(nn.ConvTranspose2d(4, 3, 5, 2, padding=2, output_padding=1), torch.float64)
    x = torch.randn(2, 4, 3, 3, dtype=torch.float64, requires_grad=True)
    assert gradcheck_layer_call(deconv, layer, x)


def test_fp32_matches_fp64():
    layer = _fresh(nn.ConvTranspose2d(32, 3, 5, 2, padding=2, output_padding=1))
    x = torch.randn(8, 32, 16, 16).contiguous(memory_format=torch.channels_last)
    expected = F.conv_transpose2d(x.double(), layer.weight.double(), layer.bias.double(), 2, 2, 1)
    torch.testing.assert_close(deconv(layer, x).double(), expected, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("layer,shape", [
    (nn.ConvTranspose2d(8, MAX_NARROW_CHANNELS + 1, 5, 2, 2, 1), (2, 8, 5, 5)),  # wide
    (nn.ConvTranspose2d(8, 3, 5, 2, 2, 0), (2, 8, 5, 5)),   # output is not 2x the input
    (nn.ConvTranspose2d(8, 3, 5, 2, 2, 1, bias=False), (2, 8, 5, 5)),
    (nn.ConvTranspose2d(8, 3, 5, 2, 2, 1), (8, 5, 5)),      # unbatched
    (nn.ConvTranspose2d(8, 3, (5, 3), 2, (2, 1), 1), (2, 8, 5, 5)),  # not square
    (nn.ConvTranspose2d(8, 3, 5, 2, 2, 1, dilation=2), (2, 8, 5, 5)),
], ids=["wide", "not-2x", "no-bias", "unbatched", "not-square", "dilated"])
def test_other_layers_run_as_themselves(layer, shape):
    layer = _fresh(layer)
    x = torch.randn(shape, requires_grad=True)
    out, flags = _forward_convolutions(lambda: deconv(layer, x))
    assert flags == [True]
    assert torch.equal(out, layer(x))


@pytest.mark.parametrize("channels_last", [False, True])
def test_narrow_deconv_output_is_channels_first(channels_last):
    layer = _fresh(nn.ConvTranspose2d(16, 3, 5, 2, padding=2, output_padding=1))
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(4, 16, 6, 6).contiguous(memory_format=fmt)
    y = deconv(layer, x)
    assert y.is_contiguous()
    torch.testing.assert_close(y, layer(x), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("x_dtype", [torch.float32, torch.bfloat16])
def test_under_bf16_autocast_it_computes_as_the_layer_does(x_dtype):
    """Inside torch.autocast the narrow layer computes in bf16 as ``layer(x)`` does (its
    backward used to fail in oneDNN on mixed dtypes), and every input gets a gradient in its
    own dtype: fp32 master weights get fp32 gradients."""
    layer = _fresh(nn.ConvTranspose2d(16, 3, 5, 2, padding=2, output_padding=1))
    x = (torch.randn(4, 16, 8, 8) * 0.1).to(x_dtype).requires_grad_()
    dy = torch.randn(4, 3, 16, 16)
    results = []
    for run in (deconv, lambda lay, inp: lay(inp)):
        layer.zero_grad()
        x.grad = None
        with torch.autocast("cpu", torch.bfloat16):
            y = run(layer, x)
        y.backward(dy.to(y.dtype))
        results.append((y, x.grad, layer.weight.grad, layer.bias.grad))
    (y, dx, dw, db), (y_ref, dx_ref, dw_ref, db_ref) = results
    assert y.dtype == y_ref.dtype == torch.bfloat16
    assert dx.dtype == x_dtype and dw.dtype == db.dtype == torch.float32
    for got, want in ((y, y_ref), (dx, dx_ref), (dw, dw_ref), (db, db_ref)):
        scale = want.float().abs().max().item()
        torch.testing.assert_close(got.float(), want.float(), rtol=2e-2, atol=2e-2 * scale)
