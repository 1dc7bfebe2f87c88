import pytest
import torch

import ssgan.kernels as K
from ssgan.kernels import reference as ref
from helpers import LOW_PRECISION, assert_close_to_truth, randn


def _truth(z: torch.Tensor, extra_class: bool) -> torch.Tensor:
    """Independent fp64 formula (not the twin), so the twin is tested too."""
    z = z.double()
    real = z[:, :-1] if extra_class else z
    fake = z[:, -1] if extra_class else torch.zeros(z.shape[0], dtype=z.dtype, device=z.device)
    m = real.max(dim=1).values
    return m + torch.log(torch.exp(real - m[:, None]).sum(dim=1)) - fake


@pytest.mark.parametrize("extra_class,cols", [(False, 10), (True, 11), (False, 1), (True, 2)])
@pytest.mark.parametrize("batch", [1, 7, 64])
def test_gradcheck_fp64(backend, device, extra_class, cols, batch):
    z = randn(batch, cols, dtype=torch.float64, device=device, scale=3).requires_grad_()
    assert K.backend_for(z) == backend
    assert torch.autograd.gradcheck(lambda a: K.gan_logits(a, extra_class=extra_class), (z,),
                                    fast_mode=True)


@pytest.mark.parametrize("dtype", LOW_PRECISION)
@pytest.mark.parametrize("extra_class,cols", [(False, 10), (True, 11), (False, 37),
                                              (True, 2500)])
def test_matches_fp64_truth(backend, device, dtype, extra_class, cols):
    z = randn(13, cols, dtype=dtype, device=device, scale=4).requires_grad_()
    assert K.backend_for(z) == backend
    out = K.gan_logits(z, extra_class=extra_class)
    g = randn(13, dtype=dtype, device=device)
    out.backward(g)
    z64 = z.detach().double().requires_grad_()
    truth = _truth(z64, extra_class)
    truth.backward(g.double())
    assert out.dtype == dtype and out.shape == (13,)
    assert_close_to_truth(out, truth, dtype, scale=max(1.0, truth.abs().max().item()))
    assert z.grad.dtype == dtype
    assert_close_to_truth(z.grad, z64.grad, dtype)


def test_non_contiguous_input(backend, device):
    wide = randn(22, 12, device=device)
    z = wide[::2, 1:]                  # row stride 24, odd column offset
    zt = randn(11, 9, device=device).t()  # column-major
    for view, extra in ((z, True), (zt, False)):
        view = view.detach().requires_grad_()
        out = K.gan_logits(view, extra_class=extra)
        out.sum().backward()
        v64 = view.detach().double().requires_grad_()
        _truth(v64, extra).sum().backward()
        assert_close_to_truth(out, _truth(view, extra), torch.float32)
        assert_close_to_truth(view.grad, v64.grad, torch.float32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_extreme_rows(backend, device, dtype):
    big = 6.0e4 if dtype == torch.float16 else 1.0e4
    rows = torch.tensor([
        [big] * 10 + [0.0],                          # all huge
        [-big] * 10 + [0.0],                         # all very negative
        [big] + [-big] * 9 + [0.0],                  # one huge logit
        [0.5] * 10 + [big],                          # huge fake logit
        [-big, big, -big, big, 0, 0, 0, 0, 0, 0, 1.0],
    ], device=device).to(dtype).requires_grad_()
    assert K.backend_for(rows) == backend
    for extra in (False, True):
        z = rows if extra else rows[:, :10]
        out = K.gan_logits(z, extra_class=extra)
        grad, = torch.autograd.grad(out.sum(), rows)
        rows64 = rows.detach().double().requires_grad_()
        truth = _truth(rows64 if extra else rows64[:, :10], extra)
        truth_grad, = torch.autograd.grad(truth.sum(), rows64)
        assert torch.isfinite(out).all() and torch.isfinite(grad).all()
        torch.testing.assert_close(out.double(), truth.detach().to(dtype).double(), rtol=1e-3,
                                   atol=1e-3)
        # the full gradient (softmax over the real columns, -1 for the fake one) against fp64
        torch.testing.assert_close(grad.double(), truth_grad, rtol=1e-3, atol=2e-3)


def test_twin_matches_formula_and_sigmoid_is_p_real(device):
    z = randn(9, 11, device=device)
    assert_close_to_truth(ref.gan_logits(z, extra_class=True), _truth(z, True), torch.float32)
    p_real = torch.softmax(z.double(), 1)[:, :10].sum(1)
    torch.testing.assert_close(torch.sigmoid(K.gan_logits(z, extra_class=True)).double(),
                               p_real, rtol=1e-5, atol=1e-6)


def test_empty_batch(backend, device):
    assert K.gan_logits(torch.empty(0, 10, device=device)).shape == (0,)


@pytest.mark.parametrize("z,extra,match", [
    (torch.randn(4), False, "must be 2-D"),
    (torch.randn(2, 3, 4), False, "must be 2-D"),
    (torch.ones(4, 10, dtype=torch.int64), False, "float64/32/16 or bfloat16"),
    (torch.randn(4, 1), True, "at least 2 columns"),
    ([[1.0, 2.0]], False, "must be a torch.Tensor"),
])
def test_bad_input(backend, device, z, extra, match):
    if isinstance(z, torch.Tensor):
        z = z.to(device)
    with pytest.raises(ValueError, match=match):
        K.gan_logits(z, extra_class=extra)
