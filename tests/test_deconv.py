"""The generator's transposed convolutions: the CPU sub-pixel forward computes layer(x), and its
backward is ATen's own."""
import pytest
import torch
from torch import nn

from ssgan.deconv import SUBPIXEL_MAX_OUT_CHANNELS, _SubpixelConvTranspose, deconv


def _layer(c_in, c_out, dtype=torch.float32, **overrides):
    layer = nn.ConvTranspose2d(c_in, c_out, overrides.pop("kernel_size", 5),
                               overrides.pop("stride", 2), padding=overrides.pop("padding", 2),
                               output_padding=overrides.pop("output_padding", 1), **overrides)
    with torch.no_grad():  # fresh weights well away from the default init's scale
        layer.weight.normal_()
        if layer.bias is not None:
            layer.bias.normal_()
    return layer.to(dtype)


@pytest.mark.parametrize("c_in,c_out,size", [(32, 3, 16), (16, 1, 4), (5, 2, 7), (8, 8, 3)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_subpixel_forward_and_backward_equal_the_layer(c_in, c_out, size, channels_last):
    layer = _layer(c_in, c_out, torch.float64)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(3, c_in, size, size, dtype=torch.float64).contiguous(memory_format=fmt)
    x.requires_grad_()
    dy = torch.randn(3, c_out, 2 * size, 2 * size, dtype=torch.float64)
    ours, theirs = deconv(layer, x), layer(x)
    assert ours.grad_fn.name().startswith("_SubpixelConvTranspose")
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
    params = [x, layer.weight, layer.bias]
    for a, b in zip(torch.autograd.grad(ours, params, dy), torch.autograd.grad(theirs, params, dy)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_subpixel_gradcheck():
    layer = _layer(4, 3, torch.float64)
    x = torch.randn(2, 4, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(_SubpixelConvTranspose.apply, (x, layer.weight, layer.bias))


def test_fp32_forward_matches_fp64():
    layer = _layer(32, 3)
    x = torch.randn(8, 32, 16, 16).contiguous(memory_format=torch.channels_last)
    expected = _layer(32, 3, torch.float64)
    expected.load_state_dict({k: v.double() for k, v in layer.state_dict().items()})
    torch.testing.assert_close(deconv(layer, x).double(), expected(x.double()),
                               rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("layer", [
    _layer(8, SUBPIXEL_MAX_OUT_CHANNELS + 1),          # wide: oneDNN's own is faster
    _layer(8, 3, kernel_size=3, padding=1),            # not the notebook's geometry
    _layer(8, 3, output_padding=0),
    _layer(8, 3, bias=False),
], ids=["wide", "kernel3", "no-output-padding", "no-bias"])
def test_other_layers_run_as_themselves(layer):
    x = torch.randn(2, 8, 5, 5, requires_grad=True)
    out = deconv(layer, x)
    assert "Subpixel" not in out.grad_fn.name()
    assert torch.equal(out, layer(x))
