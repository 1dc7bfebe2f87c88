import pytest
import torch

import ssgan.kernels as K
from ssgan.kernels import reference as ref
from helpers import LOW_PRECISION, assert_close_to_truth, randn


def _truth(logits, target, mask):
    """Independent fp64 formula: per-row CE via log_softmax, weighted mean over labeled rows."""
    z = logits.double()
    w = mask.double()
    safe = torch.where(w != 0, target, torch.zeros_like(target))
    ce = -torch.log_softmax(z, 1).gather(1, safe[:, None]).squeeze(1)
    return torch.where(w != 0, w * ce, torch.zeros_like(ce)).sum() / w.sum().clamp_min(1)


def _batch(batch, classes, dtype, device, labeled_fraction=0.5, scale=3.0):
    logits = randn(batch, classes, dtype=dtype, device=device, scale=scale)
    target = torch.randint(0, classes, (batch,), device=device)
    mask = torch.rand(batch, device=device) < labeled_fraction
    mask[0] = True
    target[~mask] = -1  # unlabeled rows hold garbage targets, as in real batches
    return logits, target, mask


@pytest.mark.parametrize("batch,classes", [(1, 10), (7, 11), (128, 10), (5, 3000)])
def test_gradcheck_fp64(backend, device, batch, classes):
    logits, target, mask = _batch(batch, classes, torch.float64, device)
    logits.requires_grad_()
    assert K.backend_for(logits) == backend
    assert torch.autograd.gradcheck(lambda z: K.masked_cross_entropy(z, target, mask),
                                    (logits,), fast_mode=True)


def test_gradcheck_float_weights(backend, device):
    logits, target, _ = _batch(9, 11, torch.float64, device)
    target = target.clamp_min(0)
    weights = torch.rand(9, dtype=torch.float64, device=device)
    weights[3] = 0.0
    logits.requires_grad_()
    assert torch.autograd.gradcheck(lambda z: K.masked_cross_entropy(z, target, weights),
                                    (logits,), fast_mode=True)
    torch.testing.assert_close(K.masked_cross_entropy(logits, target, weights),
                               _truth(logits, target, weights))


@pytest.mark.parametrize("dtype", LOW_PRECISION)
@pytest.mark.parametrize("batch,classes", [(33, 10), (128, 11), (6, 1500)])
def test_matches_fp64_truth(backend, device, dtype, batch, classes):
    logits, target, mask = _batch(batch, classes, dtype, device)
    logits.requires_grad_()
    assert K.backend_for(logits) == backend
    loss = K.masked_cross_entropy(logits, target, mask)
    loss.backward()
    z64 = logits.detach().double().requires_grad_()
    truth = _truth(z64, target, mask)
    truth.backward()
    assert loss.dtype == torch.float32 and loss.dim() == 0
    # the loss is fp32 whatever the logits' dtype: it gets fp32's tolerance
    assert_close_to_truth(loss, truth, torch.float32)
    assert logits.grad.dtype == dtype
    assert_close_to_truth(logits.grad, z64.grad, dtype)


def test_fp64_output_for_fp64_logits(backend, device):
    logits, target, mask = _batch(4, 10, torch.float64, device)
    assert K.masked_cross_entropy(logits, target, mask).dtype == torch.float64


def test_all_masked_gives_exact_zero_and_zero_grad(backend, device):
    logits = randn(6, 10, device=device).requires_grad_()
    target = torch.full((6,), -1, device=device)
    mask = torch.zeros(6, dtype=torch.bool, device=device)
    loss = K.masked_cross_entropy(logits, target, mask)
    loss.backward()
    assert loss.item() == 0.0
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_single_labeled_row_is_plain_cross_entropy(backend, device):
    logits, target, _ = _batch(5, 11, torch.float32, device)
    mask = torch.zeros(5, dtype=torch.bool, device=device)
    mask[2] = True
    target[2] = 4
    expected = torch.nn.functional.cross_entropy(logits[2:3].double(), target[2:3])
    assert_close_to_truth(K.masked_cross_entropy(logits, target, mask), expected, torch.float32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_extreme_logits(backend, device, dtype):
    big = 6.0e4 if dtype == torch.float16 else 1.0e4
    logits = torch.tensor([[big] + [0.0] * 9, [-big] * 10, [big, -big] * 5, [0.0] * 9 + [big]],
                          device=device).to(dtype).requires_grad_()
    target = torch.tensor([0, 3, 1, 0], device=device)
    mask = torch.ones(4, dtype=torch.bool, device=device)
    loss = K.masked_cross_entropy(logits, target, mask)
    loss.backward()
    truth = _truth(logits.detach(), target, mask)
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()
    torch.testing.assert_close(loss.double(), truth, rtol=1e-4, atol=1e-2)


@pytest.mark.parametrize("bad", [float("inf"), float("-inf"), float("nan")])
def test_masked_rows_with_nonfinite_logits_are_ignored(backend, device, bad):
    """A masked row's inf or nan reaches neither the loss nor any gradient, on every path."""
    logits, target, mask = _batch(8, 10, torch.float32, device)
    mask[:] = True
    mask[5] = False
    target = target.clamp_min(0)
    clean = logits.clone()
    logits[5] = bad
    leaf = logits.clone().requires_grad_()
    assert K.backend_for(leaf) == backend
    loss = K.masked_cross_entropy(leaf, target, mask)
    loss.backward()
    z64 = clean.double().requires_grad_()
    truth = _truth(z64, target, mask)
    truth.backward()
    assert_close_to_truth(loss, truth, torch.float32)
    assert torch.equal(leaf.grad[5], torch.zeros_like(leaf.grad[5]))
    assert_close_to_truth(leaf.grad, z64.grad, torch.float32)


def test_strided_target_and_logits_views(backend, device):
    """Views with strides other than 1 (a column of a pair tensor, every other row) must give
    the contiguous copies' results."""
    logits, target, mask = _batch(12, 10, torch.float32, device)
    pairs = torch.stack([target, torch.randint(0, 10, (12,), device=device)], dim=1)
    wide = torch.randn(12, 20, device=device)
    wide[:, ::2] = logits
    assert K.backend_for(logits) == backend
    strided = K.masked_cross_entropy(wide[:, ::2], pairs[:, 0], mask)
    dense = K.masked_cross_entropy(logits, target, mask)
    torch.testing.assert_close(strided, dense)
    weights, labels = torch.rand(24, device=device)[::2], target.clamp_min(0)
    torch.testing.assert_close(K.masked_cross_entropy(logits, labels, weights),
                               K.masked_cross_entropy(logits, labels, weights.contiguous()))


def test_deterministic(backend, device):
    """Fixed-order reductions: repeated calls and a strided copy of the same logits give the
    same bits (nondeterministic atomics could only show on a GPU, where this runs too)."""
    logits, target, mask = _batch(1000, 10, torch.float32, device, scale=10)
    a = K.masked_cross_entropy(logits, target, mask)
    for _ in range(5):
        assert torch.equal(a, K.masked_cross_entropy(logits, target, mask))
    wide = torch.zeros(1000, 20, device=device)
    wide[:, 1::2] = logits
    assert torch.equal(a, K.masked_cross_entropy(wide[:, 1::2], target, mask))


def test_non_contiguous_logits(backend, device):
    logits, target, mask = _batch(12, 12, torch.float32, device)
    wide = randn(12, 24, device=device)
    wide[:, ::2] = logits
    view = wide[:, ::2]
    assert_close_to_truth(K.masked_cross_entropy(view, target, mask), _truth(view, target, mask),
                          torch.float32)
    assert_close_to_truth(ref.masked_cross_entropy(view, target, mask),
                          _truth(view, target, mask), torch.float32)


def test_target_out_of_range_on_labeled_row(backend, device):
    logits, target, mask = _batch(6, 10, torch.float32, device)
    mask[4], target[4] = True, 10
    with pytest.raises(ValueError, match=r"target\[4\] = 10 is outside \[0, 10\)"):
        K.masked_cross_entropy(logits, target, mask)
    target[4] = -1
    with pytest.raises(ValueError, match=r"target\[4\] = -1"):
        K.masked_cross_entropy(logits, target, mask)


def test_deferred_target_check_flags_on_the_device_instead_of_raising(backend, device):
    logits, target, mask = _batch(6, 10, torch.float32, device)
    with K.deferred_target_checks() as check:
        assert check.flagged().tolist() == [0.0]  # nothing checked yet
        K.masked_cross_entropy(logits, target, mask)
        assert check.flag.device == logits.device and check.flagged().tolist() == [0.0]
        mask[2], target[2] = True, 10
        loss = K.masked_cross_entropy(logits, target, mask)  # no ValueError here ...
        assert torch.isfinite(loss)  # ... and the bad row does not poison the loss
        target[2] = 3
        K.masked_cross_entropy(logits, target, mask)
        assert check.flagged().tolist() == [1.0]  # the flag stays set
    assert K.backend_for(logits) == backend
    target[2] = 10
    with pytest.raises(ValueError, match=r"target\[2\] = 10"):  # outside: raises again
        K.masked_cross_entropy(logits, target, mask)


def test_a_captured_step_still_flags_a_bad_target(backend, device, monkeypatch):
    """While a CUDA graph is being captured the host may read nothing, but the deferred flag
    must still be set, or a replayed graph would never report a bad label (capture is
    simulated here: every path asks _target_checks.capturing)."""
    from ssgan.kernels import _target_checks
    monkeypatch.setattr(_target_checks, "capturing", lambda t: True)
    logits, target, mask = _batch(6, 10, torch.float32, device)
    mask[1], target[1] = True, 12
    K.masked_cross_entropy(logits, target, mask)  # capturing, not deferred: no read, no raise
    with K.deferred_target_checks() as check:
        K.masked_cross_entropy(logits, target, mask)
    assert check.flagged().tolist() == [1.0]
    assert K.backend_for(logits) == backend


@pytest.mark.parametrize("make,match", [
    (lambda z, t, m: (z, t.float(), m), "target must be an int64"),
    (lambda z, t, m: (z, t, m.long()), "mask must be a bool or float"),
    (lambda z, t, m: (z, t[:-1], m), r"target must have shape \(6,\)"),
    (lambda z, t, m: (z, t, m[:-1]), r"mask must have shape \(6,\)"),
    (lambda z, t, m: (z[0], t, m), "must be 2-D"),
    (lambda z, t, m: (z.long(), t, m), "float64/32/16 or bfloat16"),
    (lambda z, t, m: (z, t.to("meta"), m), "same device"),
])
def test_bad_input(backend, device, make, match):
    logits, target, mask = _batch(6, 10, torch.float32, device)
    with pytest.raises(ValueError, match=match):
        K.masked_cross_entropy(*make(logits, target, mask))
