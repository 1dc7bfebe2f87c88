"""The compiled CPU path under every vector ISA Inductor may pick on a user's machine.

Inductor vectorizes for the widest ISA the CPU has: AVX-512 here and in CI, AVX2 on most other
x86 CPUs, scalar code elsewhere. Its code differs per ISA, and once it differed in results:
with AVX2, the dropout's int64 ``torch.where`` took the wrong branch for every element and
nothing was dropped. So each op runs here under each ISA this machine can execute (AVX2 code
runs on an AVX-512 CPU), against the eager twins.
"""
import pytest
import torch

import ssgan.kernels as K
from ssgan.kernels._private_api import inductor_config, vector_isa_widths
import ssgan.kernels._inductor as compiled_path
from ssgan.kernels import reference as ref
from helpers import randn

pytestmark = pytest.mark.isa

# simdlen 1 matches no ISA, so Inductor emits scalar loops. The width Inductor picks by itself
# is left out: every other test of the inductor backend runs under it.
VALID, PICKED = vector_isa_widths()
WIDTHS = sorted(({1} | VALID) - {PICKED})


@pytest.fixture(params=WIDTHS, ids=lambda w: "scalar" if w == 1 else f"{w}-bit")
def vector_width(request, monkeypatch):
    """Compiles everything afresh for one vector width: with empty tables of compiled variants
    every op is traced and compiled again, under the patched config."""
    monkeypatch.setattr(compiled_path, "_variants", {})
    monkeypatch.setattr(compiled_path, "_by_layout", {})
    with inductor_config.patch({"cpp.simdlen": request.param}), K.use_backend("inductor"):
        yield request.param


LAYOUTS = [(False, (7, 9)), (True, (7, 9)), (True, (4, 6))]


@pytest.mark.parametrize("affine", [False, True])
@pytest.mark.parametrize("channels_last,spatial", LAYOUTS)
def test_dropout_masks_and_gradients_equal_the_eager_twin(vector_width, channels_last, spatial,
                                                          affine):
    # every width runs every layout, with and without the affine in turn (each compile takes
    # seconds): each (layout, affine) pair runs under one of the widths
    if affine != ((LAYOUTS.index((channels_last, spatial)) + WIDTHS.index(vector_width)) % 2
                  == 1):
        pytest.skip("each (layout, affine) pair runs under one vector width")
    # 19 channels: one full 16-lane vector and a tail along the channels-last inner dim;
    # 7x9 positions: the same along the channels-first one, and S % 4 != 0; 4x6 positions:
    # channels-last, the draw in memory order (S % 4 == 0)
    x = randn(6, 19, *spatial)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    scale, shift = (randn(19).abs() + 0.5, randn(19)) if affine else (None, None)
    dy = randn(6, 19, *spatial)
    assert K.backend_for(x) == "inductor"
    names = ["x"] + (["scale", "shift"] if affine else [])
    for seed in (3, 2**40 + 17):
        results = []
        # the twin on channels-first memory: its numbers drawn in plain row-major order
        for op, x_in in ((K.leaky_relu_dropout, x), (ref.leaky_relu_dropout, x.contiguous())):
            leaves = {n: t.clone().requires_grad_() for n, t in zip(names, (x_in, scale, shift))}
            out = op(leaves["x"], p=0.5, seed=seed,
                     scale=leaves.get("scale"), shift=leaves.get("shift"))
            results.append((out, torch.autograd.grad(out, list(leaves.values()), dy)))
        (out, grads), (twin, twin_grads) = results
        kept = (out != 0).float().mean().item()
        assert 0.35 < kept < 0.65, f"{kept:.0%} kept at p=0.5"
        assert torch.equal(out != 0, twin != 0), seed
        torch.testing.assert_close(out, twin)
        torch.testing.assert_close(grads[0], twin_grads[0])
        for grad, twin_grad in zip(grads[1:], twin_grads[1:]):  # sums over 6 * S elements
            torch.testing.assert_close(grad, twin_grad, rtol=1e-5, atol=1e-4)


def test_heads_and_their_range_check_equal_the_eager_twins(vector_width):
    logits = randn(37, 11, scale=4.0)  # a vector of rows and a tail
    target = torch.randint(0, 11, (37,))
    mask = torch.rand(37) < 0.6
    for extra_class in (False, True):
        leaf = logits.clone().requires_grad_()
        out = K.gan_logits(leaf, extra_class=extra_class)
        twin_leaf = logits.clone().requires_grad_()
        twin = ref.gan_logits(twin_leaf, extra_class=extra_class)
        torch.testing.assert_close(out, twin)
        torch.testing.assert_close(torch.autograd.grad(out.sum(), leaf)[0],
                                   torch.autograd.grad(twin.sum(), twin_leaf)[0])
    leaf, twin_leaf = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    loss = K.masked_cross_entropy(leaf, target, mask)
    twin = ref.masked_cross_entropy(twin_leaf, target, mask)
    torch.testing.assert_close(loss, twin)
    torch.testing.assert_close(torch.autograd.grad(loss, leaf)[0],
                               torch.autograd.grad(twin, twin_leaf)[0])
    row = int(mask.nonzero()[3])  # a labeled row
    bad = target.clone()
    bad[row] = 11
    with pytest.raises(ValueError, match=rf"target\[{row}\] = 11"):
        K.masked_cross_entropy(logits, bad, mask)
    bad[~mask] = -5  # out of range, but on unlabeled rows only
    bad[mask] = target[mask]
    torch.testing.assert_close(K.masked_cross_entropy(logits, bad, mask),
                               ref.masked_cross_entropy(logits, bad, mask))
