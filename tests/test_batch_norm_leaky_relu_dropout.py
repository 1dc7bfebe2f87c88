"""The batch-norm block with per-segment statistics against its fp64 twin, against stock
PyTorch (nn.BatchNorm2d, F.leaky_relu) and against the per-segment calls it replaces."""
import pytest
import torch
import torch.nn.functional as F

import ssgan.kernels as K
from ssgan.kernels import _checks, reference as ref
from helpers import LOW_PRECISION, assert_close_to_truth, inductor_diagonal, randn

EPS = 1e-3


def _inputs(shape, dtype, device, layout="contiguous", mean=0.0):
    x = randn(*shape, dtype=torch.float64, device=device) + mean
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    elif layout == "strided":   # neither layout: every other row of a taller tensor
        x = randn(shape[0], shape[1], shape[2] * 2, *shape[3:], dtype=torch.float64,
                  device=device)[:, :, ::2] + mean
    weight = randn(shape[1], dtype=torch.float64, device=device) + 1.5
    bias = randn(shape[1], dtype=torch.float64, device=device) * 0.5
    return x.to(dtype), weight.to(dtype), bias.to(dtype)


def _away_from_kink(x, weight, bias, segments):
    """Fresh inputs until no pre-activation lies within 1e-3 of the leaky-ReLU kink, where
    finite differences would straddle it."""
    bounds = _checks.segment_bounds(segments, x.shape[0])
    mean, _, rstd = ref.batch_norm_statistics(x, bounds, EPS)
    z = ref._normalized(x, weight, bias, mean, rstd, ref.segment_of_rows(bounds, x.device))
    return z.abs().min() > 1e-3


# the Inductor path compiles the twins' per-segment graphs anew for every dtype, layout and set
# of segments (about 15 s each on 2 cores): it runs the first cases, each in one dtype, the
# kernel path all
INDUCTOR_CASES = 3


@pytest.mark.parametrize("shape,segments", [((6, 3, 2, 2), (2, 4)), ((5, 4, 3), (1, 3, 1)),
                                            ((4, 2, 2, 3), None)])
@pytest.mark.parametrize("p", [0.0, 0.3])
def test_gradcheck_fp64(backend, device, shape, segments, p):
    if backend == "inductor" and segments != (2, 4):
        pytest.skip("the Inductor path's gradcheck runs on the first case (INDUCTOR_CASES)")
    for _ in range(20):
        x, weight, bias = _inputs(shape, torch.float64, device)
        if _away_from_kink(x, weight, bias, segments or (shape[0],)):
            break
    assert K.backend_for(x) == backend
    args = [t.detach().requires_grad_() for t in (x, weight, bias)]
    fn = lambda a, w, b: K.batch_norm_leaky_relu_dropout(a, w, b, segments=segments, eps=EPS,
                                                         p=p, seed=77)
    assert torch.autograd.gradcheck(fn, args, fast_mode=True)


TWIN_CASES = [((6, 33, 2, 2), (4, 1, 1), "channels_last"), ((5, 3, 4, 4), (2, 2, 1), "strided"),
              ((7, 5, 3, 4), (3, 1, 3), "contiguous"), ((7, 5, 3, 4), (2, 5), "channels_last"),
              ((9, 37, 5), (4, 5), "contiguous"), ((4, 6, 2, 2), (1, 1, 1, 1), "contiguous")]


def _matches_the_twin(x, weight, bias, segments, running, *, p, seed, momentum):
    """The op on x (in its dtype) with running statistics, forward and backward, against the
    fp64 twin; returns the output."""
    dtype = x.dtype
    running_twin = [t.clone().double() for t in running]
    args = [t.detach().requires_grad_() for t in (x, weight.to(dtype), bias.to(dtype))]
    y = K.batch_norm_leaky_relu_dropout(*args, segments=segments, eps=EPS, p=p, seed=seed,
                                        running_mean=running[0], running_var=running[1],
                                        momentum=momentum)
    # the truth starts from the same rounded inputs: a pre-activation that rounding moves
    # across the kink would otherwise change every gradient of its segment and channel
    truth_args = [t.detach().double().requires_grad_() for t in args]
    truth = ref.batch_norm_leaky_relu_dropout(*truth_args, segments=segments, eps=EPS, p=p,
                                              seed=seed, running_mean=running_twin[0],
                                              running_var=running_twin[1], momentum=momentum)
    assert_close_to_truth(y, truth, dtype, scale=4)
    for got, want in zip(running, running_twin):
        assert_close_to_truth(got, want, torch.float32)
    dy = randn(*x.shape, dtype=torch.float64, device=x.device)
    y.backward(dy.to(dtype))
    truth.backward(dy)
    for got, want in zip(args, truth_args):
        assert got.grad.dtype == dtype
        assert_close_to_truth(got.grad, want.grad, dtype, scale=20)
    return y


@pytest.mark.parametrize("dtype", LOW_PRECISION)
@pytest.mark.parametrize("shape,segments,layout", TWIN_CASES)
def test_matches_the_fp64_twin(backend, device, dtype, shape, segments, layout):
    inductor_diagonal(backend, TWIN_CASES.index((shape, segments, layout)),
                      LOW_PRECISION.index(dtype), len(LOW_PRECISION), cases=INDUCTOR_CASES)
    x64, weight, bias = _inputs(shape, torch.float64, device, layout)
    x = x64.to(dtype)
    running = [torch.zeros(shape[1], device=device), torch.ones(shape[1], device=device)]
    y = _matches_the_twin(x, weight, bias, segments, running, p=0.4, seed=5, momentum=0.3)
    assert K.backend_for(x) == backend and y.dtype == dtype and y.shape == x.shape
    if layout != "strided":   # the output keeps a native layout
        assert y.stride() == x.stride()


# (shape, segments, input layout, requested output layout): G's dense output (channels-first
# in, channels-last out), odd sizes, a strided input; fp64 by gradcheck, then fp32 and bf16
# (the bf16 step's) against the fp64 twin: the swap changes addresses only, and the other
# tests run every dtype
SWAP_CASES = [((6, 8, 4, 4), (2, 4), "contiguous", torch.channels_last),
              ((5, 3, 3, 5), (2, 1, 2), "channels_last", torch.contiguous_format),
              ((4, 5, 3, 2), None, "strided", torch.channels_last)]
SWAP_DTYPES = [torch.float64, torch.float32, torch.bfloat16]


@pytest.mark.parametrize("dtype", SWAP_DTYPES)
@pytest.mark.parametrize("shape,segments,layout,memory_format", SWAP_CASES)
def test_memory_format_writes_the_asked_layout(backend, device, dtype, shape, segments, layout,
                                               memory_format):
    """``memory_format``: y comes out in it, dy is read in it, dx keeps x's layout."""
    inductor_diagonal(backend, SWAP_CASES.index((shape, segments, layout, memory_format)),
                      SWAP_DTYPES.index(dtype), len(SWAP_DTYPES))
    for _ in range(20):
        x64, weight, bias = _inputs(shape, torch.float64, device, layout)
        if _away_from_kink(x64, weight, bias, segments or (shape[0],)):
            break
    args = [t.to(dtype).detach().requires_grad_() for t in (x64, weight, bias)]
    fn = lambda a, w, b: K.batch_norm_leaky_relu_dropout(a, w, b, segments=segments, eps=EPS,
                                                         p=0.3, seed=11,
                                                         memory_format=memory_format)
    y = fn(*args)
    assert K.backend_for(args[0]) == backend
    assert y.is_contiguous(memory_format=memory_format) and y.dtype == dtype
    if dtype == torch.float64:
        assert torch.autograd.gradcheck(fn, args, fast_mode=True)
        return
    dy = randn(*shape, dtype=torch.float64, device=device).contiguous(
        memory_format=memory_format)
    y.backward(dy.to(dtype))
    truth_args = [t.detach().double().requires_grad_() for t in args]
    truth = ref.batch_norm_leaky_relu_dropout(*truth_args, segments=segments, eps=EPS, p=0.3,
                                              seed=11)
    truth.backward(dy)
    assert_close_to_truth(y, truth, dtype, scale=4)
    assert args[0].grad.stride() == args[0].stride()
    for got, want in zip(args, truth_args):
        assert_close_to_truth(got.grad, want.grad, dtype, scale=20)


def test_one_segment_is_stock_batch_norm_then_leaky_relu(backend, device):
    """Without dropout, one segment is nn.BatchNorm2d (training) and F.leaky_relu: output,
    every gradient and the running statistics."""
    x, weight, bias = _inputs((8, 6, 5, 5), torch.float64, device, mean=3.0)
    bn = torch.nn.BatchNorm2d(6, eps=EPS, momentum=0.2).double().to(device)
    with torch.no_grad():
        bn.weight.copy_(weight)
        bn.bias.copy_(bias)
    xs = x.clone().requires_grad_()
    want = F.leaky_relu(bn(xs), 0.2)
    running = [torch.zeros(6, dtype=torch.float64, device=device),
               torch.ones(6, dtype=torch.float64, device=device)]
    args = [t.clone().requires_grad_() for t in (x, weight, bias)]
    got = K.batch_norm_leaky_relu_dropout(*args, running_mean=running[0],
                                          running_var=running[1], momentum=0.2, eps=EPS)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(running[0], bn.running_mean)
    torch.testing.assert_close(running[1], bn.running_var)
    dy = torch.randn_like(want)
    want.backward(dy)
    got.backward(dy)
    for mine, stock in zip(args, (xs, bn.weight, bn.bias)):
        torch.testing.assert_close(mine.grad, stock.grad)


def test_segments_are_the_calls_they_replace_and_only_the_first_moves_the_statistics(
        backend, device):
    x, weight, bias = _inputs((9, 4, 3, 3), torch.float32, device)
    segments = (4, 2, 3)
    running = [torch.zeros(4, device=device), torch.ones(4, device=device)]
    together = K.batch_norm_leaky_relu_dropout(x, weight, bias, segments=segments, eps=EPS,
                                               running_mean=running[0],
                                               running_var=running[1])
    alone_running = [torch.zeros(4, device=device), torch.ones(4, device=device)]
    parts = [K.batch_norm_leaky_relu_dropout(
        x[a:a + n], weight, bias, eps=EPS, running_mean=alone_running[0] if a == 0 else None,
        running_var=alone_running[1] if a == 0 else None)
        for a, n in zip((0, 4, 6), segments)]
    torch.testing.assert_close(together, torch.cat(parts))
    torch.testing.assert_close(running, alone_running)


def test_statistics_stay_exact_when_the_mean_dwarfs_the_std(backend, device):
    """Data of mean 1e4 and std 1 in fp32: a variance from sums of squares, E[x^2] - E[x]^2,
    would cancel to noise (fp32 spacing at 1e8 is 8). What fp32 cannot avoid is the mean's
    own rounding, a few spacings at 1e4 (1e-3 each) after a sum, times the scale: the
    tolerance, three orders below what cancellation would cost."""
    x, weight, bias = _inputs((16, 3, 6, 6), torch.float32, device, mean=1e4)
    y = K.batch_norm_leaky_relu_dropout(x, weight, bias, segments=(10, 6), eps=EPS)
    truth = ref.batch_norm_leaky_relu_dropout(x.double(), weight.double(), bias.double(),
                                              segments=(10, 6), eps=EPS)
    atol = 4 * 1e-3 * weight.abs().max().item()
    torch.testing.assert_close(y.double(), truth, rtol=1e-4, atol=atol)


def test_the_mask_is_leaky_relu_dropouts_for_the_same_seed(backend, device):
    x, weight, bias = _inputs((6, 8, 4, 4), torch.float32, device, layout="channels_last")
    y = K.batch_norm_leaky_relu_dropout(x, weight, bias, segments=(3, 3), eps=EPS, p=0.5,
                                        seed=2024)
    z = torch.cat([F.batch_norm(x[a:a + 3], None, None, weight, bias, True, 0.0, EPS)
                   for a in (0, 3)])
    expected = K.leaky_relu_dropout(z.contiguous(memory_format=torch.channels_last), p=0.5,
                                    seed=2024)
    assert torch.equal(y == 0, expected == 0)
    kept = (y != 0).float().mean().item()
    assert 0.4 < kept < 0.6


@pytest.mark.parametrize("kwargs,message", [
    (dict(segments=(3, 2)), "sum to 5, but x has 6 rows"),
    (dict(segments=(6, 0)), "positive ints"),
    (dict(segments=(1, 1, 1, 1, 2)), "at most 4 segments"),
    (dict(segments=[2.0, 4]), "positive ints"),
    (dict(p=1.0), "dropout p"),
    (dict(momentum=2.0), "momentum"),
    (dict(running_mean=torch.zeros(3)), "both running_mean and running_var"),
])
def test_bad_arguments_are_named(kwargs, message):
    x, weight, bias = _inputs((6, 3, 2, 2), torch.float32, "cpu")
    with pytest.raises(ValueError, match=message):
        K.batch_norm_leaky_relu_dropout(x, weight, bias, **kwargs)


def test_bad_affine_and_inputs_are_named():
    x, weight, bias = _inputs((6, 3, 2, 2), torch.float32, "cpu")
    with pytest.raises(ValueError, match="weight must have one entry per channel"):
        K.batch_norm_leaky_relu_dropout(x, weight[:2], bias)
    with pytest.raises(ValueError, match="x must be float64/32/16 or bfloat16"):
        K.batch_norm_leaky_relu_dropout(x.long(), weight, bias)
    with pytest.raises(ValueError, match=r"x must be \(N, C, ...\)"):
        K.batch_norm_leaky_relu_dropout(x[0, 0, 0], weight[:2], bias[:2])


# (shape, segments, layout, rows per reduction step, slices at most): each segment's values
# split over several programs, with empty slices (a short segment), a segment of one row, a
# cap on the slices, and channels-last
SLICED_CASES = [((9, 5, 3, 4), (3, 1, 5), "contiguous", 16, 64),
                ((9, 5, 3, 4), (3, 1, 5), "channels_last", 16, 64),
                ((12, 37, 2, 2), (7, 5), "channels_last", 4, 64),
                ((11, 3, 5), (2, 9), "strided", 4, 2)]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape,segments,layout,rows,max_slices", SLICED_CASES)
def test_reductions_split_over_programs_equal_the_twin(monkeypatch, device, dtype, shape,
                                                       segments, layout, rows, max_slices):
    """The kernel's two reductions with each segment's values split over programs, combined
    by the last to finish: the same statistics, output, running statistics and gradients
    as the fp64 twin (small steps and slices force the split on small inputs), and the
    arrival counters back at 0 for the next launch (a CUDA graph replays it as it is)."""
    monkeypatch.setenv("SSGAN_KERNELS", "triton")
    from ssgan.kernels import _triton_batch_norm_leaky_relu_dropout as kernels
    monkeypatch.setattr(kernels, "BLOCK_ROWS", rows)
    monkeypatch.setattr(kernels, "TILES_PER_SLICE", 1)
    monkeypatch.setattr(kernels, "MAX_SLICES", max_slices)
    x64, weight, bias = _inputs(shape, torch.float64, device, layout, mean=3.0)
    x = x64.to(dtype)
    bounds = _checks.segment_bounds(segments, shape[0])
    work = kernels._Reduction(x, kernels._Launch.plan(x), bounds)  # the launches' own split
    assert work.splits > 1
    running = [torch.rand(shape[1], device=device), torch.rand(shape[1], device=device) + 0.5]
    _matches_the_twin(x, weight, bias, segments, running, p=0.3, seed=9, momentum=0.2)
    assert not work.counters.any()


def test_split_statistics_stay_exact_when_the_mean_dwarfs_the_std(monkeypatch, device):
    """As above, for the split reduction: each slice about its own first value and mean, then
    Chan's combination, with a first value far from the rest (an outlier row first)."""
    monkeypatch.setenv("SSGAN_KERNELS", "triton")
    from ssgan.kernels import _triton_batch_norm_leaky_relu_dropout as kernels
    monkeypatch.setattr(kernels, "BLOCK_ROWS", 8)
    monkeypatch.setattr(kernels, "TILES_PER_SLICE", 1)
    x, weight, bias = _inputs((16, 3, 6, 6), torch.float32, device, mean=1e4)
    x[0] += 50.0
    y = K.batch_norm_leaky_relu_dropout(x, weight, bias, segments=(10, 6), eps=EPS)
    truth = ref.batch_norm_leaky_relu_dropout(x.double(), weight.double(), bias.double(),
                                              segments=(10, 6), eps=EPS)
    atol = 4 * 1e-3 * weight.abs().max().item()
    torch.testing.assert_close(y.double(), truth, rtol=1e-4, atol=atol)
