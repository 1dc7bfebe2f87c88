"""The fused ops inside ``torch.autocast`` (bf16): they take the dtype autocast's layers hand
them, compute in fp32, return their output and gradients in their inputs' dtypes, and agree
with the fp64 twins to bf16's own rounding."""
import pytest
import torch

import ssgan.kernels as K
from ssgan.kernels import reference as ref
from helpers import away_from_zero, randn

ULP = 2.0 ** -8  # bf16's relative rounding step: fp32 internals land within one of the truth


def _truth_and_grad(fn, inputs, dout):
    leaves = [t.detach().double().requires_grad_() for t in inputs]
    out = fn(*leaves)
    out.backward(dout.double())
    return out, [t.grad for t in leaves]


CASES = {
    "leaky_relu_dropout": (lambda x: K.leaky_relu_dropout(x, p=0.3, seed=5),
                           lambda x: ref.leaky_relu_dropout(x, p=0.3, seed=5),
                           lambda d: away_from_zero(randn(6, 8, 5, 5, device=d, scale=3))),
    "gan_logits": (lambda z: K.gan_logits(z, extra_class=True),
                   lambda z: ref.gan_logits(z, extra_class=True),
                   lambda d: randn(13, 11, device=d, scale=4)),
}


@pytest.mark.parametrize("op", list(CASES))
def test_ops_in_bf16_autocast_keep_fp32_internals(backend, device, op):
    fn, twin, make = CASES[op]
    x = make(device).to(torch.bfloat16).requires_grad_()  # as autocast's layers hand it on
    assert K.backend_for(x) == backend
    with torch.autocast(device.type, torch.bfloat16):
        out = fn(x)
    dout = randn(*out.shape, device=device).to(out.dtype)
    out.backward(dout)
    truth, (grad_truth,) = _truth_and_grad(twin, [x], dout)
    assert out.dtype == x.grad.dtype == torch.bfloat16
    for got, want in ((out, truth), (x.grad, grad_truth)):
        scale = want.abs().max().item()
        torch.testing.assert_close(got.double(), want, rtol=ULP, atol=ULP * scale)


def test_masked_cross_entropy_in_bf16_autocast(backend, device):
    logits = randn(9, 11, device=device, scale=4).to(torch.bfloat16).requires_grad_()
    target = torch.randint(0, 11, (9,), device=device)
    mask = torch.rand(9, device=device) < 0.6
    mask[0] = True
    assert K.backend_for(logits) == backend
    with torch.autocast(device.type, torch.bfloat16):
        loss = K.masked_cross_entropy(logits, target, mask)
    loss.backward()
    truth, (grad_truth,) = _truth_and_grad(
        lambda z: ref.masked_cross_entropy(z, target, mask), [logits], torch.ones(()))
    assert loss.dtype == torch.float32 and logits.grad.dtype == torch.bfloat16
    torch.testing.assert_close(loss.double(), truth, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logits.grad.double(), grad_truth, rtol=ULP,
                               atol=ULP * grad_truth.abs().max().item())


@pytest.mark.parametrize("op", list(CASES))
def test_fp32_inputs_stay_fp32_inside_autocast(backend, device, op):
    fn, twin, make = CASES[op]
    x = make(device).requires_grad_()
    with torch.autocast(device.type, torch.bfloat16):
        out = fn(x)
    out.sum().backward()
    truth, (grad_truth,) = _truth_and_grad(twin, [x], torch.ones_like(out))
    assert out.dtype == x.grad.dtype == torch.float32
    torch.testing.assert_close(out.double(), truth, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x.grad.double(), grad_truth, rtol=1e-5, atol=1e-5)


def test_feature_matching_in_bf16_autocast(backend, device):
    """The loss is fp32 from bf16 features; their gradients come back in bf16."""
    real = randn(9, 12, device=device, scale=3).to(torch.bfloat16).requires_grad_()
    fake = randn(5, 12, device=device, scale=3).to(torch.bfloat16).requires_grad_()
    assert K.backend_for(real) == backend
    with torch.autocast(device.type, torch.bfloat16):
        loss = K.feature_matching(real, fake)
    loss.backward()
    truth, grads = _truth_and_grad(ref.feature_matching, [real, fake], torch.ones(()))
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss.double(), truth, rtol=1e-5, atol=1e-5)
    for leaf, grad_truth in zip((real, fake), grads):
        assert leaf.grad.dtype == torch.bfloat16
        torch.testing.assert_close(leaf.grad.double(), grad_truth, rtol=ULP,
                                   atol=ULP * grad_truth.abs().max().item())
