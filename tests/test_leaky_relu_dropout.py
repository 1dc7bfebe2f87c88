import json
import os
import subprocess
import sys

import pytest
import torch

import ssgan.kernels as K
from conftest import KERNEL_PATH
from ssgan.kernels import reference as ref
from helpers import (LOW_PRECISION, assert_close_to_truth, away_from_zero, inductor_diagonal,
                     randn)

SHAPES = [(5, 7), (3, 5, 4, 7), (2, 3, 9), (1, 4, 3, 3)]


def _inputs(shape, dtype, device, channels_last=False, affine=True):
    x = randn(*shape, dtype=dtype, device=device)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    if not affine:
        return x, None, None
    scale = randn(shape[1], dtype=dtype, device=device) + 1.5
    shift = randn(shape[1], dtype=dtype, device=device) * 0.5
    return x, scale, shift


def _pre_activation_away_from_kink(x, scale, shift):
    """Moves x so that x*scale + shift is at least 0.1 away from 0 (for finite differences)."""
    view = (1, -1) + (1,) * (x.dim() - 2)
    z = away_from_zero(x * scale.view(view) + shift.view(view))
    return ((z - shift.view(view)) / scale.view(view)).contiguous(
        memory_format=torch.channels_last if x.is_contiguous(memory_format=torch.channels_last)
        and not x.is_contiguous() else torch.contiguous_format)


GRADCHECK_CASES = [(s, False) for s in SHAPES] + [(s, True) for s in SHAPES if len(s) == 4]


@pytest.mark.parametrize("shape,channels_last", GRADCHECK_CASES)
@pytest.mark.parametrize("p", [0.0, 0.5])
def test_gradcheck_fp64(backend, device, shape, p, channels_last):
    inductor_diagonal(backend, GRADCHECK_CASES.index((shape, channels_last)), int(p > 0), 2)
    x, scale, shift = _inputs(shape, torch.float64, device, channels_last)
    scale = scale.abs() + 0.5
    x = _pre_activation_away_from_kink(x, scale, shift)
    assert K.backend_for(x) == backend
    args = [t.detach().requires_grad_() for t in (x, scale, shift)]
    fn = lambda a, s, b: K.leaky_relu_dropout(a, p=p, seed=1234, scale=s, shift=b,
                                              negative_slope=0.2)
    assert torch.autograd.gradcheck(fn, args, fast_mode=True)


def test_gradcheck_fp64_without_affine(backend, device):
    x = away_from_zero(randn(4, 6, 5, dtype=torch.float64, device=device)).requires_grad_()
    assert K.backend_for(x) == backend
    assert torch.autograd.gradcheck(lambda a: K.leaky_relu_dropout(a, p=0.25, seed=99), (x,),
                                    fast_mode=True)


REFERENCE_CASES = [((6, 10), False), ((4, 5, 6, 3), False), ((4, 5, 6, 3), True),
                   ((3, 7, 13), False), ((3, 20, 3, 2), True)]


@pytest.mark.parametrize("dtype", LOW_PRECISION)
@pytest.mark.parametrize("shape,channels_last", REFERENCE_CASES)
@pytest.mark.parametrize("p", [0.0, 0.5])
def test_matches_fp64_reference(backend, device, dtype, shape, channels_last, p):
    inductor_diagonal(backend, REFERENCE_CASES.index((shape, channels_last)),
                      LOW_PRECISION.index(dtype), len(LOW_PRECISION))
    x, scale, shift = _inputs(shape, dtype, device, channels_last)
    assert K.backend_for(x) == backend
    dy = randn(*shape, dtype=dtype, device=device)
    leaves = [t.detach().requires_grad_() for t in (x, scale, shift)]
    y = K.leaky_relu_dropout(leaves[0], p=p, seed=4321, scale=leaves[1], shift=leaves[2])
    y.backward(dy)
    truth_leaves = [t.detach().double().requires_grad_() for t in (x, scale, shift)]
    y64 = ref.leaky_relu_dropout(truth_leaves[0], p=p, seed=4321, scale=truth_leaves[1],
                                 shift=truth_leaves[2])
    y64.backward(dy.double())
    assert y.dtype == dtype and y.shape == x.shape
    assert y.is_contiguous(memory_format=torch.channels_last) == channels_last or x.dim() != 4
    assert_close_to_truth(y, y64, dtype)
    assert_close_to_truth(leaves[0].grad, truth_leaves[0].grad, dtype)
    # few channels or many, the gradient keeps the layout too
    assert leaves[0].grad.stride() == x.stride()
    for got, truth in zip(leaves[1:], truth_leaves[1:]):
        assert got.grad.dtype == dtype
        assert_close_to_truth(got.grad, truth.grad, dtype, scale=10.0)


# (shape, input layout, requested output layout): images (3 channels, positions a multiple of
# 4: the shared Philox draw), odd sizes (one Philox draw per element), a strided input. The
# swap changes addresses only: fp64 (gradcheck), fp32 and bf16 (the bf16 step's) run it, the
# other tests every dtype
SWAP_CASES = [((4, 3, 8, 8), "contiguous", torch.channels_last),
              ((3, 5, 4, 7), "channels_last", torch.contiguous_format),
              ((2, 3, 5, 3), "strided", torch.channels_last)]
SWAP_DTYPES = [torch.float64, torch.float32, torch.bfloat16]


def _laid_out(x, layout):
    if layout == "channels_last":
        return x.contiguous(memory_format=torch.channels_last)
    if layout == "strided":
        return x.transpose(2, 3).contiguous().transpose(2, 3)
    return x


@pytest.mark.parametrize("dtype", SWAP_DTYPES)
@pytest.mark.parametrize("shape,layout,memory_format", SWAP_CASES)
def test_memory_format_writes_the_asked_layout(backend, device, dtype, shape, layout,
                                               memory_format):
    """``memory_format``: y comes out in it, dy is read in it, dx keeps x's layout, and the
    values are the twin's (fp64 by gradcheck, the low precisions against fp64)."""
    inductor_diagonal(backend, SWAP_CASES.index((shape, layout, memory_format)),
                      SWAP_DTYPES.index(dtype), len(SWAP_DTYPES))
    x, scale, shift = _inputs(shape, dtype, device)
    if dtype == torch.float64:
        x = _pre_activation_away_from_kink(x, scale.abs() + 0.5, shift)
        scale = scale.abs() + 0.5
    x = _laid_out(x, layout)
    assert K.backend_for(x) == backend
    fn = lambda a, s, b: K.leaky_relu_dropout(a, p=0.5, seed=2024, scale=s, shift=b,
                                              memory_format=memory_format)
    leaves = [t.detach().requires_grad_() for t in (x, scale, shift)]
    y = fn(*leaves)
    assert y.is_contiguous(memory_format=memory_format) and y.dtype == dtype
    if dtype == torch.float64:
        assert torch.autograd.gradcheck(fn, leaves, fast_mode=True)
        return
    dy = randn(*shape, dtype=dtype, device=device).contiguous(memory_format=memory_format)
    y.backward(dy)
    truth = [t.detach().double().requires_grad_() for t in (x, scale, shift)]
    y64 = ref.leaky_relu_dropout(truth[0], p=0.5, seed=2024, scale=truth[1], shift=truth[2])
    y64.backward(dy.double())
    assert_close_to_truth(y, y64, dtype)
    assert_close_to_truth(leaves[0].grad, truth[0].grad, dtype)
    assert leaves[0].grad.stride() == x.stride()
    for got, want in zip(leaves[1:], truth[1:]):
        assert_close_to_truth(got.grad, want.grad, dtype, scale=10.0)


def test_memory_format_is_checked():
    x = randn(2, 3, 4)
    with pytest.raises(ValueError, match="memory_format must be .* for a 4-D x.*3-D"):
        K.leaky_relu_dropout(x, p=0.5, memory_format=torch.channels_last)
    with pytest.raises(ValueError, match="memory_format must be"):
        K.leaky_relu_dropout(x, p=0.5, memory_format=torch.preserve_format)


def test_layouts_give_identical_results(backend, device):
    """The mask is a function of the logical index, so layout must not change anything."""
    x, scale, shift = _inputs((3, 6, 5, 4), torch.float32, device)
    assert K.backend_for(x) == backend
    base = K.leaky_relu_dropout(x, p=0.5, seed=77, scale=scale, shift=shift)
    wide = randn(3, 12, 5, 8, device=device)
    wide[:, ::2, :, ::2] = x
    variants = [x.to(memory_format=torch.channels_last), wide[:, ::2, :, ::2],
                x.transpose(2, 3).contiguous().transpose(2, 3)]
    for v, keeps_layout in zip(variants, (True, False, False)):
        out = K.leaky_relu_dropout(v, p=0.5, seed=77, scale=scale, shift=shift)
        torch.testing.assert_close(out, base, rtol=0, atol=0)
        # contiguous and channels-last inputs keep their layout, any other strides come back
        # contiguous, on every path alike
        assert out.stride() == (v.stride() if keeps_layout else base.stride())


def test_channels_last_strides_agree_with_the_movedim_definition():
    """The 4-D shortcut (PyTorch's channels-last flag) answers exactly what
    ``movedim(1, -1).is_contiguous()`` does, size-1 dims, empty tensors, slices and
    permutations included."""
    generator = torch.Generator().manual_seed(int.from_bytes(os.urandom(4), "little"))
    seen = set()
    for _ in range(400):
        rank = int(torch.randint(3, 6, (1,), generator=generator))
        shape = [int(v) for v in torch.randint(0, 4, (rank,), generator=generator)]  # 0: empty
        order = torch.randperm(rank, generator=generator).tolist()
        base = torch.empty([shape[d] for d in order]).permute(*torch.argsort(
            torch.tensor(order)).tolist())
        for t in (base, base[:, ::2], base.contiguous(memory_format=torch.channels_last)
                  if rank == 4 else base.movedim(1, -1).contiguous().movedim(-1, 1)):
            expected = t.movedim(1, -1).is_contiguous()
            assert ref.has_channels_last_strides(t) == expected, (t.shape, t.stride())
            seen.add((rank, expected))
    assert {(4, True), (4, False)} <= seen


def test_non_contiguous_gradients(backend, device):
    x = randn(6, 8, 10, device=device).transpose(0, 2)  # (10, 8, 6), strided
    scale, shift = randn(8, device=device), randn(8, device=device)
    leaves = [t.detach().requires_grad_() for t in (scale, shift)]
    xs = x.detach().requires_grad_()
    dy = randn(10, 8, 6, device=device).transpose(1, 2).contiguous().transpose(1, 2)
    K.leaky_relu_dropout(xs, p=0.5, seed=5, scale=leaves[0], shift=leaves[1]).backward(dy)
    t = [v.detach().double().requires_grad_() for v in (x, scale, shift)]
    ref.leaky_relu_dropout(t[0], p=0.5, seed=5, scale=t[1], shift=t[2]).backward(dy.double())
    assert_close_to_truth(xs.grad, t[0].grad, torch.float32)
    assert_close_to_truth(leaves[0].grad, t[1].grad, torch.float32, scale=10.0)
    assert_close_to_truth(leaves[1].grad, t[2].grad, torch.float32, scale=10.0)


@pytest.mark.parametrize("p", [0.2, 0.5, 0.9])
def test_keep_rate_within_statistical_bounds(backend, device, p):
    x = randn(64, 16, 8, 8, device=device).abs() + 0.1  # strictly positive: y == 0 iff dropped
    assert K.backend_for(x) == backend
    y = K.leaky_relu_dropout(x, p=p, seed=int(torch.randint(0, 2**62, ())))
    kept = (y != 0).double().mean().item()
    sigma = ((1 - p) * p / x.numel()) ** 0.5
    assert abs(kept - (1 - p)) < 6 * sigma
    torch.testing.assert_close(y[y != 0], x[y != 0] / (1 - p))


def test_backward_uses_the_forward_mask(backend, device):
    x = randn(32, 12, 6, device=device)
    x = away_from_zero(x).requires_grad_()
    assert K.backend_for(x) == backend
    y = K.leaky_relu_dropout(x, p=0.5, seed=2024, negative_slope=0.2)
    y.backward(torch.ones_like(y))
    assert torch.equal(x.grad != 0, y != 0)
    expected = torch.where(x > 0, 1.0, 0.2) / 0.5
    torch.testing.assert_close(x.grad[y != 0], expected[y != 0])


def test_seed_determinism_and_manual_seed(backend, device):
    x = randn(16, 8, 4, 4, device=device).abs() + 0.1
    assert K.backend_for(x) == backend
    a = K.leaky_relu_dropout(x, p=0.5, seed=11)
    assert torch.equal(a, K.leaky_relu_dropout(x, p=0.5, seed=11))
    assert not torch.equal(a, K.leaky_relu_dropout(x, p=0.5, seed=12))
    assert torch.equal(a, K.leaky_relu_dropout(x, p=0.5, seed=torch.tensor(11)))
    torch.manual_seed(3)
    b = K.leaky_relu_dropout(x, p=0.5)
    c = K.leaky_relu_dropout(x, p=0.5)
    torch.manual_seed(3)
    assert torch.equal(b, K.leaky_relu_dropout(x, p=0.5))
    assert not torch.equal(b, c)


@pytest.mark.parametrize("path", [KERNEL_PATH, "inductor"])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("shape", [
    (8, 5, 7, 3),      # S = 21: one Philox evaluation per element
    (6, 5, 4, 4),      # S % 4 == 0: one evaluation per four elements (the model's shapes)
    (2, 3, 64, 48),    # ... over several position blocks per channel
    (3, 300, 2, 2),    # ... over several channel blocks and position blocks (channels-last)
])
def test_same_mask_on_every_path_as_the_eager_twin(device, monkeypatch, path, channels_last,
                                                   shape):
    """Equal seeds give bit-identical masks, forward and backward, on the Triton path and the
    Inductor path as on the eager twin (the reference)."""
    monkeypatch.setenv("SSGAN_KERNELS", "triton" if path == KERNEL_PATH else path)
    x = randn(*shape, device=device).abs() + 0.1
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    assert K.backend_for(x) == path
    for seed in (0, 1, 123456789, 2**40 + 17, 2**63 - 1):
        leaf = x.clone().requires_grad_()
        out = K.leaky_relu_dropout(leaf, p=0.5, seed=seed)
        out.backward(torch.ones_like(out))
        # the twin on channels-first memory: its numbers drawn in plain row-major order
        twin = ref.leaky_relu_dropout(x.contiguous(), p=0.5, seed=seed)
        assert torch.equal(out != 0, twin != 0), seed
        assert torch.equal(leaf.grad != 0, twin != 0), seed
        torch.testing.assert_close(out, twin)


def test_channels_last_draw_equals_the_row_major_draw():
    """The channels-last order of the Philox draw gives every element the number of its
    row-major index, for random shapes whose positions per channel are a multiple of 4."""
    from ssgan.kernels._philox import dropout_uniform, dropout_uniform_channels_last
    generator = torch.Generator().manual_seed(int.from_bytes(os.urandom(4), "little"))
    for spatial in [(4,), (2, 2), (4, 4), (3, 8), (2, 2, 3)]:
        n, c = (int(v) for v in torch.randint(1, 9, (2,), generator=generator))
        shape = torch.Size((n, c, *spatial))
        seed = torch.randint(0, 2**62, (1,), generator=generator)
        drawn = dropout_uniform_channels_last(seed, shape, torch.device("cpu"))
        assert drawn.shape == shape and drawn.movedim(1, -1).is_contiguous()
        row_major = dropout_uniform(seed, shape.numel(), torch.device("cpu")).view(shape)
        assert torch.equal(drawn, row_major), (shape, seed)


def test_eval_mode_and_p_zero_do_not_drop(backend, device):
    x = randn(10, 4, 3, device=device)
    expected = torch.nn.functional.leaky_relu(x, 0.2)
    torch.testing.assert_close(K.leaky_relu_dropout(x, p=0.5, training=False), expected)
    torch.testing.assert_close(K.leaky_relu_dropout(x, p=0.0), expected)
    torch.testing.assert_close(K.leaky_relu_dropout(x, p=0.0, negative_slope=0.0),
                               torch.relu(x))


def test_extreme_values(backend, device):
    x = torch.tensor([[-1e4, 1e4, 6.5e4, -6.5e4, 0.0, 1e-30]], device=device)
    assert K.backend_for(x) == backend
    for dtype in (torch.float32, torch.float16):
        xd = x.to(dtype)
        truth = ref.leaky_relu_dropout(xd.double())
        out = K.leaky_relu_dropout(xd)
        assert torch.isfinite(out).all()
        torch.testing.assert_close(out.double(), truth, rtol=1e-3, atol=0)


def test_single_row_odd_sizes_and_empty(backend, device):
    for shape in [(1, 1), (1, 3, 1, 1), (7, 1, 5), (1, 300)]:
        x, scale, shift = _inputs(shape, torch.float32, device)
        torch.testing.assert_close(
            K.leaky_relu_dropout(x, p=0.5, seed=3, scale=scale, shift=shift),
            ref.leaky_relu_dropout(x.double(), p=0.5, seed=3, scale=scale.double(),
                                   shift=shift.double()).float())
    empty = torch.empty(0, 4, device=device)
    assert K.leaky_relu_dropout(empty, p=0.5).shape == (0, 4)


@pytest.mark.parametrize("kwargs,match", [
    (dict(p=1.0), r"p must be in \[0, 1\)"),
    (dict(p=-0.1), r"p must be in \[0, 1\)"),
    (dict(scale=torch.ones(5)), r"one entry per channel"),
    (dict(shift=torch.ones(4, 1)), r"must be 1-D"),
    (dict(scale=torch.ones(4, dtype=torch.int32)), r"float64/32/16 or bfloat16"),
    (dict(p=0.5, seed=-1), r"seed must be an int"),
    (dict(p=0.5, seed=1.5), r"seed must be an int"),
])
def test_bad_arguments(backend, device, kwargs, match):
    x = torch.randn(3, 4, 2, device=device)
    kwargs = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in kwargs.items()}
    with pytest.raises(ValueError, match=match):
        K.leaky_relu_dropout(x, **kwargs)


def test_bad_tensors(backend, device):
    with pytest.raises(ValueError, match="float64/32/16 or bfloat16"):
        K.leaky_relu_dropout(torch.ones(3, 4, dtype=torch.int64, device=device))
    with pytest.raises(ValueError, match="at least 1 dimension"):
        K.leaky_relu_dropout(torch.tensor(1.0, device=device))
    with pytest.raises(ValueError, match="same device"):
        K.leaky_relu_dropout(torch.ones(3, 4, device=device),
                             scale=torch.ones(4, device="meta"))


def test_strided_scale_and_shift_views(backend, device):
    """scale/shift views with stride 2 give the results (and gradients) of contiguous copies."""
    x = randn(3, 6, 4, 5, device=device)
    wide_scale = (randn(12, device=device) + 1.5).requires_grad_()
    wide_shift = randn(12, device=device).requires_grad_()
    assert K.backend_for(x) == backend
    y = K.leaky_relu_dropout(x, p=0.5, seed=5, scale=wide_scale[::2], shift=wide_shift[1::2])
    y.backward(torch.ones_like(y))
    dense = [t.detach()[sl].clone().requires_grad_()
             for t, sl in ((wide_scale, slice(0, None, 2)), (wide_shift, slice(1, None, 2)))]
    truth = ref.leaky_relu_dropout(x, p=0.5, seed=5, scale=dense[0], shift=dense[1])
    truth.backward(torch.ones_like(truth))
    torch.testing.assert_close(y, truth)
    torch.testing.assert_close(wide_scale.grad[::2], dense[0].grad)
    torch.testing.assert_close(wide_shift.grad[1::2], dense[1].grad)
    assert wide_scale.grad[1::2].abs().max() == 0


@pytest.mark.parametrize("channels_last", [False, True])
def test_spatial_size_above_one_block(backend, device, channels_last):
    """S = 50 * 50 = 2500 > BLOCK_ELEMENTS: several programs per (n, c) row on the kernel path."""
    x, scale, shift = _inputs((2, 3, 50, 50), torch.float32, device, channels_last)
    leaves = [t.detach().requires_grad_() for t in (x, scale, shift)]
    assert K.backend_for(x) == backend
    y = K.leaky_relu_dropout(leaves[0], p=0.5, seed=77, scale=leaves[1], shift=leaves[2])
    dy = randn(2, 3, 50, 50, device=device)
    y.backward(dy)
    truth = [t.detach().double().requires_grad_() for t in (x, scale, shift)]
    y64 = ref.leaky_relu_dropout(truth[0], p=0.5, seed=77, scale=truth[1], shift=truth[2])
    y64.backward(dy.double())
    assert_close_to_truth(y, y64, torch.float32)
    for got, want in zip(leaves, truth):
        assert_close_to_truth(got.grad, want.grad, torch.float32, scale=10.0)


SM90_TTIR = """
import importlib, json, sys
from ssgan.kernels._private_api import compile_for_gpu
L = importlib.import_module("ssgan.kernels._triton_leaky_relu_dropout")
kernel = getattr(L, sys.argv[1])
flags = json.loads(sys.argv[2])
signature = {name: "*fp64" if name.endswith("_ptr") else "i32" for name in kernel.arg_names}
signature["seed_ptr"] = "*i64"
# typed as a launch types them: declared constexprs are constants, other floats fp32 arguments
const = {name: v for name, v in flags.items() if kernel.arg_names.index(name) in kernel.constexprs}
signature.update({name: "constexpr" if name in const else "fp32" for name in flags})
constexprs = {(kernel.arg_names.index(k),): v for k, v in const.items()}
print(compile_for_gpu(kernel, signature, constexprs, 90).asm["ttir"])
"""


@pytest.mark.subprocess
@pytest.mark.parametrize("kernel", ["_forward_kernel", "_backward_kernel"])
def test_fp64_kernels_take_no_fp32_scalars_on_the_gpu(kernel):
    """The interpreter passes Python floats, a GPU launch passes float arguments as fp32: the
    slope, p and 1/(1-p) must reach an fp64 kernel in fp64 (as compile-time constants), so its
    TTIR for an H100 (compiled here, in a process without the interpreter) has no f32
    argument and no f32 -> f64 extension."""
    flags = dict(NEGATIVE_SLOPE=0.2, P=0.3, KEEP_SCALE=1 / 0.7, HAS_SCALE=True, HAS_SHIFT=True,
                 HAS_DROPOUT=True, SHARED_PHILOX=True, CHANNELS_LAST=False, IS_FP64=True,
                 BLOCK_A=8, BLOCK_B=256, GROUP=4)
    if kernel == "_backward_kernel":
        flags["AFFINE_GRADS"] = True
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-c", SM90_TTIR, kernel, json.dumps(flags)], env=env,
                         capture_output=True, text=True)
    if out.returncode and "backend" in out.stderr.lower():
        pytest.skip(f"this Triton cannot compile for sm_90: {out.stderr[-300:]}")
    assert out.returncode == 0, out.stderr[-3000:]
    signature = next(line for line in out.stdout.splitlines() if "tt.func" in line)
    assert ": f32" not in signature and "arith.extf" not in out.stdout
