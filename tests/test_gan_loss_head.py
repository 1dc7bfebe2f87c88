"""The fused GAN loss head against an independent stock-PyTorch formulation in fp64
(F.cross_entropy, F.binary_cross_entropy_with_logits, F.log_softmax), on every path."""
import pytest
import torch
import torch.nn.functional as F

import ssgan.kernels as K
from bench import stock
from ssgan.kernels import reference as ref
from helpers import LOW_PRECISION, assert_close_to_truth, inductor_diagonal, randn

LAYOUTS = [((5, 3), False), ((4, 3, 6), False), ((6, 4), True), ((3, 5, 2), True),
           ((1, 1), False), ((1, 1, 1), True)]


def _truth(z, target, mask, segments, extra_class):
    """The six outputs as a user writes them in stock PyTorch (bench.stock), in fp64."""
    return stock.gan_loss_head(z.double(), target, mask, segments, extra_class)


def _inputs(segments, extra_class, device, dtype=torch.float64, scale=3.0, cols=10,
            labeled=0.6):
    z = randn(sum(segments), cols + int(extra_class), dtype=dtype, device=device, scale=scale)
    rows = segments[2] if len(segments) == 3 else segments[0]
    target = torch.randint(0, cols, (rows,), device=device)
    mask = torch.rand(rows, device=device) < labeled
    return z, torch.where(mask, target, -1), mask


@pytest.mark.parametrize("segments,extra_class", LAYOUTS)
def test_gradcheck_fp64(backend, device, segments, extra_class):
    # the Inductor path on a two-segment layout and a three-segment one with the extra class
    inductor_diagonal(backend, LAYOUTS.index((segments, extra_class)), 0, 3)
    z, target, mask = _inputs(segments, extra_class, device)
    assert K.backend_for(z) == backend
    fn = lambda a: K.gan_loss_head(a, target, mask, segments=segments,
                                   extra_class=extra_class)[:4]
    assert torch.autograd.gradcheck(fn, (z.requires_grad_(),), fast_mode=True)


DTYPES = (torch.float64, *LOW_PRECISION)
CASES = LAYOUTS + [((128, 128, 64), False), ((70, 64), True)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("segments,extra_class", CASES)
def test_matches_stock_pytorch(backend, device, dtype, segments, extra_class):
    inductor_diagonal(backend, CASES.index((segments, extra_class)), DTYPES.index(dtype),
                      len(DTYPES))
    z, target, mask = _inputs(segments, extra_class, device, dtype)
    zs = z.detach().requires_grad_()
    out = K.gan_loss_head(zs, target, mask, segments=segments, extra_class=extra_class)
    assert out.shape == (6,) and out.dtype == ref.compute_dtype(dtype)
    z64 = z.detach().double().requires_grad_()
    truth = _truth(z64, target, mask, segments, extra_class)
    assert_close_to_truth(out, truth, torch.float32 if dtype != torch.float64 else dtype)
    g = torch.randn(6, dtype=torch.float64, device=device)
    (out[:4] * g[:4].to(out.dtype)).sum().backward()
    (truth[:4] * g[:4]).sum().backward()
    assert zs.grad.dtype == dtype
    assert_close_to_truth(zs.grad, z64.grad, dtype)


def test_the_twin_is_stock_pytorch(device):
    z, target, mask = _inputs((6, 5, 4), True, device)
    out = ref.gan_loss_head(z, target, mask, segments=(6, 5, 4), extra_class=True)
    torch.testing.assert_close(out, _truth(z, target, mask, (6, 5, 4), True))


@pytest.mark.parametrize("value", [1e4, -1e4])
def test_extreme_logits_stay_finite(backend, device, value):
    z, target, mask = _inputs((5, 4), True, device, torch.float32)
    z[0, 3] = value
    z[5, :] = value          # a fake row with every logit at the extreme
    z[6, -1] = -value        # the fake class's logit opposite
    zs = z.requires_grad_()
    out = K.gan_loss_head(zs, target, mask, segments=(5, 4), extra_class=True)
    out[:4].sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(zs.grad).all()
    truth = _truth(z.detach(), target, mask, (5, 4), True)
    torch.testing.assert_close(out.double(), truth, rtol=1e-5, atol=1e-3)


def test_all_rows_masked_gives_zero_supervised_loss_and_gradient(backend, device):
    z, target, _ = _inputs((4, 4, 3), False, device)
    mask = torch.zeros(3, dtype=torch.bool, device=device)
    zs = z.requires_grad_()
    out = K.gan_loss_head(zs, torch.full_like(target, -1), mask, segments=(4, 4, 3))
    assert out[0].item() == 0 and out[4].item() == 0 and out[5].item() == 0
    out[0].backward()
    assert torch.count_nonzero(zs.grad) == 0


def test_one_labeled_row(backend, device):
    z, target, _ = _inputs((4, 4), False, device)
    mask = torch.zeros(4, dtype=torch.bool, device=device)
    mask[2] = True
    target[2] = 7
    out = K.gan_loss_head(z, target, mask, segments=(4, 4))
    assert out[0].item() == pytest.approx(F.cross_entropy(z[2:3], target[2:3]).item())
    assert out[5].item() == 1


def test_a_label_out_of_range_on_a_labeled_row_is_an_error(backend, device):
    z, target, mask = _inputs((4, 3, 5), False, device)
    mask[3], target[3] = True, 10
    with pytest.raises(ValueError, match=r"target\[3\] = 10 is outside \[0, 10\)"):
        K.gan_loss_head(z, target, mask, segments=(4, 3, 5))


@pytest.mark.parametrize("segments,message", [((4, 3), "summing to class_logits' 8 rows"),
                                              ((8,), "(real, fake)"),
                                              ((4, 0, 4), "positive row counts")])
def test_bad_segments_are_named(segments, message):
    z = torch.randn(8, 10)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        K.gan_loss_head(z, torch.zeros(4, dtype=torch.long), torch.ones(4, dtype=torch.bool),
                        segments=segments)


def test_labels_of_the_wrong_shape_are_named():
    z = torch.randn(8, 10)
    with pytest.raises(ValueError, match=r"target must have shape \(3,\)"):
        K.gan_loss_head(z, torch.zeros(4, dtype=torch.long), torch.ones(4, dtype=torch.bool),
                        segments=(3, 5))
