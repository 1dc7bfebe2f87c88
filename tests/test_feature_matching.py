"""The fused feature-matching loss against the formula written in stock PyTorch in fp64, on
every path: fp64 gradcheck, the low precisions, odd and one-row shapes, slices and strided
inputs, large means, ties, and bad inputs by name."""
import pytest
import torch

import ssgan.kernels as K
from bench import stock
from ssgan.kernels import reference as ref
from helpers import LOW_PRECISION, assert_close_to_truth, inductor_diagonal, randn


def _truth(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """The notebook's loss as a user writes it (bench.stock), in fp64."""
    return stock.feature_matching(real.double(), fake.double())


def _away_from_ties(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """fake with every feature's mean at least 0.05 from real's: |t| has a kink at 0."""
    gap = real.mean(0) - fake.mean(0)
    push = torch.where(gap.abs() < 0.05, torch.sign(gap) * 0.1 + (gap == 0) * 0.1, 0.0)
    return fake - push


@pytest.mark.parametrize("rows,cols", [((5, 3), 4), ((1, 6), 37), ((4, 1), 1)])
def test_gradcheck_fp64(backend, device, rows, cols):
    real = randn(rows[0], cols, dtype=torch.float64, device=device)
    fake = _away_from_ties(real, randn(rows[1], cols, dtype=torch.float64, device=device))
    assert K.backend_for(real) == backend
    args = [t.detach().requires_grad_() for t in (real, fake)]
    assert torch.autograd.gradcheck(K.feature_matching, args, fast_mode=True)


DTYPES = (torch.float64, *LOW_PRECISION)
CASES = [((128, 128), 128, "slices"), ((7, 3), 5, "contiguous"), ((1, 9), 130, "contiguous"),
         ((33, 1), 37, "strided"), ((64, 70), 192, "slices"), ((2, 2), 1, "strided")]


def _inputs(rows, cols, layout, dtype, device, scale=2.0):
    if layout == "slices":   # row slices of one pass's features, as the GPU's trainer passes
        both = randn(sum(rows) + 3, cols, dtype=dtype, device=device, scale=scale)
        return both[:rows[0]], both[rows[0]:sum(rows)]
    if layout == "strided":  # columns not contiguous: a transposed view
        return tuple(randn(cols, r, dtype=dtype, device=device, scale=scale).t() for r in rows)
    return tuple(randn(r, cols, dtype=dtype, device=device, scale=scale) for r in rows)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows,cols,layout", CASES)
def test_matches_stock_pytorch(backend, device, dtype, rows, cols, layout):
    inductor_diagonal(backend, CASES.index((rows, cols, layout)), DTYPES.index(dtype),
                      len(DTYPES))
    real, fake = _inputs(rows, cols, layout, dtype, device)
    leaves = [t.detach().requires_grad_() for t in (real, fake)]
    out = K.feature_matching(*leaves)
    assert out.shape == () and out.dtype == ref.compute_dtype(dtype)
    truth_leaves = [t.detach().double().requires_grad_() for t in (real, fake)]
    truth = _truth(*truth_leaves)
    assert_close_to_truth(out, truth, torch.float32 if dtype != torch.float64 else dtype)
    g = float(torch.randn(()))
    out.backward(torch.tensor(g, dtype=out.dtype, device=device))
    (truth * g).backward()
    for leaf, truth_leaf in zip(leaves, truth_leaves):
        assert leaf.grad.dtype == dtype and leaf.grad.shape == leaf.shape
        assert_close_to_truth(leaf.grad, truth_leaf.grad, dtype)


def test_large_means_keep_their_small_difference(backend, device):
    """Features around 1e4 whose means differ by about 1: fp32 sums keep that difference to a
    few of 1e4's fp32 spacings."""
    real = randn(128, 64, device=device) + 1e4
    fake = randn(128, 64, device=device) + 1e4 + 1.0
    out = K.feature_matching(real, fake)
    assert out.item() == pytest.approx(_truth(real, fake).item(), abs=5e-3)


def test_equal_means_give_zero_loss_and_zero_gradient(backend, device):
    real = randn(6, 8, device=device)
    fake = real.flip(0).detach().requires_grad_()   # the same rows, summed in another order
    leaf = real.clone().requires_grad_()
    out = K.feature_matching(leaf, leaf.detach().clone().requires_grad_())
    out.backward()
    assert out.item() == 0 and torch.count_nonzero(leaf.grad) == 0
    assert K.feature_matching(real, fake).item() == pytest.approx(0.0, abs=1e-6)


def test_the_twin_is_stock_pytorch(device):
    real, fake = randn(9, 11, dtype=torch.float64, device=device), randn(4, 11,
                                                                        dtype=torch.float64,
                                                                        device=device)
    torch.testing.assert_close(ref.feature_matching(real, fake), _truth(real, fake))


@pytest.mark.parametrize("real,fake,message", [
    (torch.randn(4, 3), torch.randn(4, 5), "same feature count"),
    (torch.randn(4, 3), torch.randn(4, 3, dtype=torch.float64), "same feature count and dtype"),
    (torch.randn(0, 3), torch.randn(4, 3), "at least one row"),
    (torch.randn(4, 3, 1), torch.randn(4, 3), "features_real"),
    (torch.randint(0, 5, (4, 3)), torch.randn(4, 3), "features_real")])
def test_bad_inputs_are_named(real, fake, message):
    with pytest.raises(ValueError, match=message):
        K.feature_matching(real, fake)
