"""Convolution gradients computed another way on a CPU (ssgan.conv_grads): the same values and
gradients as the layer itself, only the gradients the backward pass in progress uses, and the
layers that do not qualify run as themselves."""
from unittest import mock

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import ssgan.conv_grads as conv_grads
from ssgan.conv_grads import MAX_TINY_POSITIONS, conv
from ssgan.devices import decisions_of
from ssgan.subpixel import MAX_NARROW_CHANNELS

from helpers import LayerCall, assert_close_to_truth, gradcheck_layer_call

# (C_in, C_out, kernel, stride, padding, input size): narrow inputs (D's first layer and odd
# ones) and tiny outputs (D's last layer, a strided one, a 1x1 output)
NARROW = [(3, 64, 3, 2, 1, 32), (1, 5, 3, 2, 1, 6), (MAX_NARROW_CHANNELS, 7, 4, 2, 1, 8),
          (3, 4, 5, 1, 2, 5)]
TINY = [(128, 128, 3, 1, 0, 4), (6, 5, 3, 2, 1, 4), (7, 9, 3, 1, 0, 3), (5, 3, 2, 2, 0, 4)]


def _layer(c_in, c_out, k, s, p, dtype=torch.float64) -> nn.Conv2d:
    layer = nn.Conv2d(c_in, c_out, k, s, p).to(dtype)
    with torch.no_grad():  # weights well away from the default init's small scale
        for param in layer.parameters():
            param.normal_()
    return layer


def _input(c_in, size, dtype=torch.float64, layout="channels_first", batch=3) -> torch.Tensor:
    x = torch.randn(batch, c_in, size, size, dtype=dtype)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    elif layout == "strided":  # every other column of a wider tensor
        x = torch.randn(batch, c_in, size, 2 * size, dtype=dtype)[..., ::2]
    return x.requires_grad_()


def _grads(out: torch.Tensor, dy: torch.Tensor, layer: nn.Conv2d, x: torch.Tensor):
    return torch.autograd.grad(out, [x, layer.weight, layer.bias], dy)


def test_the_models_layers_that_qualify():
    """D's first layer (from RGB) takes the sub-pixel input gradient and its last (2x2 output)
    the matrix-product weight gradient; the others, and every layer on a GPU, run ATen's."""
    x = torch.randn(2, 3, 32, 32)
    assert conv_grads._rewrites(_layer(3, 64, 3, 2, 1), x) == (True, False)
    assert conv_grads._rewrites(_layer(128, 128, 3, 1, 0), torch.randn(2, 128, 4, 4)) \
        == (False, True)
    assert conv_grads._rewrites(_layer(64, 64, 3, 2, 1), torch.randn(2, 64, 16, 16)) \
        == (False, False)
    with decisions_of("cuda"):
        assert conv_grads._rewrites(_layer(3, 64, 3, 2, 1), x) == (False, False)


@pytest.mark.parametrize("geometry", NARROW + TINY, ids=lambda g: "x".join(map(str, g)))
@pytest.mark.parametrize("layout", ["channels_first", "channels_last", "strided"])
def test_values_and_gradients_equal_the_layers(geometry, layout):
    c_in, c_out, k, s, p, size = geometry
    layer = _layer(c_in, c_out, k, s, p)
    x = _input(c_in, size, layout=layout)
    assert any(conv_grads._rewrites(layer, x))
    ours, theirs = conv(layer, x), layer(x)
    assert type(ours.grad_fn).__name__ == "_Conv2dBackward"
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
    dy = torch.randn_like(theirs)
    ours, theirs = _grads(ours, dy, layer, x), _grads(theirs, dy, layer, x)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    if conv_grads._rewrites(layer, x)[1]:  # the product's weight gradient: the weight's layout
        assert ours[1].stride() == layer.weight.stride()


@pytest.mark.parametrize("geometry", [NARROW[2], TINY[1]], ids=["narrow", "tiny"])
def test_gradcheck(geometry):
    c_in, c_out, k, s, p, size = geometry
    assert gradcheck_layer_call(conv, _layer(c_in, c_out, k, s, p), _input(c_in, size, batch=2))


@pytest.mark.parametrize("geometry", NARROW[:1] + TINY[:1], ids=["narrow", "tiny"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_low_precision_against_fp64(geometry, dtype):
    c_in, c_out, k, s, p, size = geometry
    layer = _layer(c_in, c_out, k, s, p)
    x = _input(c_in, size, batch=16, layout="channels_last")
    dy = torch.randn_like(layer(x))
    truth = _grads(layer(x), dy, layer, x)
    low = _layer(c_in, c_out, k, s, p, dtype)
    with torch.no_grad():
        for mine, ref in zip(low.parameters(), layer.parameters()):
            mine.copy_(ref)
    x_low = x.detach().to(dtype).requires_grad_()
    got = _grads(conv(low, x_low), dy.to(dtype), low, x_low)
    for g, t in zip(got, truth):
        assert g.dtype == dtype
        assert_close_to_truth(g, t, dtype, scale=t.abs().max().item())


def test_extreme_inputs_stay_finite_and_exact_in_fp64():
    layer = _layer(*TINY[0][:5])
    x = (_input(128, 4).detach() * 1e4).requires_grad_()
    dy = torch.randn_like(layer(x)) * 1e4
    for a, b in zip(_grads(conv(layer, x), dy, layer, x), _grads(layer(x), dy, layer, x)):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-6)


@pytest.mark.parametrize("x_dtype", [torch.float32, torch.bfloat16])
def test_under_bf16_autocast_every_input_gets_its_own_dtype(x_dtype):
    """As ``layer(x)`` under autocast: bf16 compute, fp32 master weights get fp32 gradients."""
    layer = _layer(3, 8, 3, 2, 1, torch.float32)
    x = torch.randn(4, 3, 8, 8).to(x_dtype).requires_grad_()
    with torch.autocast("cpu", torch.bfloat16):
        ours, theirs = conv(layer, x), layer(x)
    assert ours.dtype == theirs.dtype == torch.bfloat16
    dy = torch.randn_like(theirs)
    for a, b in zip(_grads(ours, dy, layer, x), _grads(theirs, dy, layer, x)):
        assert a.dtype == b.dtype
        torch.testing.assert_close(a.float(), b.float(), rtol=2e-2,
                                   atol=2e-2 * b.float().abs().max().item())


@pytest.mark.parametrize("wanted", ["input", "weights"])
def test_only_the_gradients_the_pass_uses_are_computed(wanted):
    """D's fake-batch layers are differentiated twice a step, for D's weights and for G's
    input: each pass computes only its own gradient, as ATen's backward does."""
    layer = _layer(3, 5, 3, 2, 1)
    x = _input(3, 2)  # narrow and tiny: both rewrites apply
    assert conv_grads._rewrites(layer, x) == (True, True)
    out = conv(layer, x)
    inputs = [x] if wanted == "input" else [layer.weight, layer.bias]
    with mock.patch.object(conv_grads, "subpixel_conv_transpose",
                           wraps=conv_grads.subpixel_conv_transpose) as sub, \
            mock.patch.object(conv_grads, "_weight_grads", wraps=conv_grads._weight_grads) as mm:
        got = torch.autograd.grad(out.square().sum(), inputs)
    assert (sub.called, mm.called) == ((True, False) if wanted == "input" else (False, True))
    want = torch.autograd.grad(layer(x).square().sum(), inputs)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("layer,shape", [
    (nn.Conv2d(16, 8, 3, 2, 1), (2, 16, 16, 16)),                 # neither narrow nor tiny
    (nn.Conv2d(3, 8, 3, 2, 1, bias=False), (2, 3, 8, 8)),         # no bias
    (nn.Conv2d(3, 8, (3, 1), 2, (1, 0)), (2, 3, 8, 8)),           # not square
    (nn.Conv2d(4, 8, 3, 1, 0, groups=2), (2, 4, 4, 4)),           # grouped
    (nn.Conv2d(3, 8, 3, 1, 1, dilation=2), (2, 3, 4, 4)),         # dilated
    (nn.Conv2d(3, 8, 3, 2, 1), (3, 8, 8)),                        # unbatched
], ids=["wide-and-large", "no-bias", "not-square", "grouped", "dilated", "unbatched"])
def test_other_layers_run_as_themselves(layer, shape):
    x = torch.randn(shape, requires_grad=True)
    out = conv(layer, x)
    assert type(out.grad_fn).__name__ != "_Conv2dBackward"
    assert torch.equal(out, layer(x))


def test_without_grad_mode_the_layer_runs_as_itself():
    """Evaluation and ``torch.export`` (under no_grad) see ATen's convolution alone, no alias
    and no autograd Function: an exported classifier holds only ATen ops."""
    layer = _layer(3, 8, 3, 2, 1)
    x = _input(3, 8)
    with torch.no_grad():
        program = torch.export.export(LayerCall(conv, layer), (x.detach(),))
    targets = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    assert targets == {"aten.conv2d.default"}


def test_tiny_means_at_most_max_tiny_positions():
    layer = _layer(16, 16, 3, 1, 0)
    side = int(MAX_TINY_POSITIONS ** 0.5)
    assert conv_grads._rewrites(layer, torch.randn(1, 16, side + 2, side + 2))[1]
    assert not conv_grads._rewrites(layer, torch.randn(1, 16, side + 3, side + 3))[1]


def test_a_narrow_input_that_the_sub_pixel_form_cannot_make_takes_atens_gradient():
    """A strided layer whose output does not tile its input exactly (an odd input size with
    stride 2): the sub-pixel form would make a different size."""
    layer = _layer(3, 4, 3, 2, 1)
    x = _input(3, 7)
    assert conv_grads._rewrites(layer, x) == (False, False)
    torch.testing.assert_close(F.conv2d(x, layer.weight, layer.bias, 2, 1), conv(layer, x))


@pytest.mark.parametrize("c_in", [1, 3])
def test_the_output_has_the_layers_layout(c_in):
    """A one-channel channels-last weight is also contiguous: its alias must keep the strides,
    or the output, and every gradient after it, changes layout (a copy per step)."""
    layer = _layer(c_in, 8, 3, 2, 1, torch.float32).to(memory_format=torch.channels_last)
    x = torch.randn(2, c_in, 8, 8, requires_grad=True)
    assert conv_grads._rewrites(layer, x)[0]
    assert conv(layer, x).stride() == layer(x).stride()
