"""The fused ops are twice differentiable (gradient penalties such as R1 differentiate D's input
gradient again), work under torch.func.grad, and refuse vmap and forward-mode AD by name."""
import pytest
import torch
from torch import nn

import ssgan.kernels as K
from ssgan.models import Discriminator
from helpers import away_from_zero, randn


def _ops(device):
    """Each op as a function of its differentiable inputs, with fresh fp64 inputs."""
    x = away_from_zero(randn(3, 4, 5, dtype=torch.float64, device=device))
    scale = (torch.rand(4, dtype=torch.float64, device=device) + 0.5)
    shift = randn(4, dtype=torch.float64, device=device) * 0.1
    logits = randn(6, 5, dtype=torch.float64, device=device, scale=3)
    target = torch.randint(0, 5, (6,), device=device)
    mask = torch.tensor([True, False, True, True, False, True], device=device)
    return {
        "leaky_relu_dropout": (lambda a, s, b: K.leaky_relu_dropout(
            a, p=0.3, seed=11, scale=s, shift=b), (x, scale, shift)),
        "gan_logits": (lambda z: K.gan_logits(z, extra_class=True), (logits,)),
        "gan_logits_fixed_fake": (lambda z: K.gan_logits(z), (logits[:, :4].contiguous(),)),
        "masked_cross_entropy": (lambda z: K.masked_cross_entropy(z, target, mask), (logits,)),
        # the means of real and fake rows 1 apart in every feature: away from |t|'s kink
        "feature_matching": (K.feature_matching, (logits[:4], logits[4:] + 1.0 + 2 * (
            logits[:4].mean(0) - logits[4:].mean(0)).clamp(min=0))),
    }


@pytest.mark.parametrize("op", ["leaky_relu_dropout", "gan_logits", "gan_logits_fixed_fake",
                                "masked_cross_entropy", "feature_matching"])
def test_gradgradcheck(backend, device, op):
    fn, inputs = _ops(device)[op]
    inputs = tuple(t.clone().requires_grad_() for t in inputs)
    assert K.backend_for(inputs[0]) == backend
    assert torch.autograd.gradgradcheck(fn, inputs)


def _penalty_gradients(model: nn.Module, x: torch.Tensor, head) -> dict[str, torch.Tensor]:
    """Every parameter's gradient of the R1 penalty ||d head(model(x)).sum() / dx||^2."""
    model.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_()
    (grad_x,) = torch.autograd.grad(head(model(x)).sum(), x, create_graph=True)
    grad_x.pow(2).sum().backward()
    return {name: p.grad for name, p in model.named_parameters()}


def _with_backend(name, fn):
    with K.use_backend(name):
        return fn()


def test_the_issue_example_gives_every_layer_a_gradient(backend, device):
    torch.manual_seed(0)
    conv1, conv2 = nn.Conv2d(3, 8, 3).to(device).double(), nn.Conv2d(8, 4, 3).to(device).double()
    model = nn.Sequential(conv1, nn.Identity(), conv2)
    model.forward = lambda x: conv2(K.leaky_relu_dropout(conv1(x), p=0.3, seed=7))
    x = randn(2, 3, 9, 9, dtype=torch.float64, device=device)
    assert K.backend_for(x) == backend
    fused = _penalty_gradients(model, x, lambda y: y)
    twins = _with_backend("torch", lambda: _penalty_gradients(model, x, lambda y: y))
    # the input gradient depends on neither bias (conv1's only through the kink)
    for name in ("0.bias", "2.bias"):
        assert twins[name] is None and (fused[name] is None or not fused[name].any()), name
    for name in ("0.weight", "2.weight"):
        assert twins[name] is not None and fused[name] is not None, name
        torch.testing.assert_close(fused[name], twins[name], rtol=1e-10, atol=1e-10)


def test_an_r1_penalty_through_d_gives_the_twins_gradient_for_every_parameter(backend, device):
    torch.manual_seed(1)
    d = Discriminator(in_channels=1, num_classes=3, size_mult=4, drop_rate=0.5,
                      extra_class=True).to(device).double()
    x = randn(4, 1, 32, 32, dtype=torch.float64, device=device)
    assert K.backend_for(x) == backend

    def penalty_grads():
        torch.manual_seed(2)  # the same dropout seeds on both paths
        return _penalty_gradients(d, x, lambda out: out[1] + K.masked_cross_entropy(
            out[0], torch.tensor([0, 1, -1, 2], device=device),
            torch.tensor([True, True, False, True], device=device)))

    fused = penalty_grads()
    twins = _with_backend("torch", penalty_grads)
    assert set(fused) == set(twins)
    for name, grad in twins.items():
        if grad is None:  # no path from the penalty (e.g. a bias before a BatchNorm)
            assert fused[name] is None or not fused[name].any(), name
            continue
        assert fused[name] is not None, name
        torch.testing.assert_close(fused[name], grad, rtol=1e-8, atol=1e-10, msg=name)
    assert sum(g is not None for g in twins.values()) > len(twins) // 2


def test_torch_func_grad_works_and_vmap_and_jvp_are_refused_by_name(backend, device):
    if backend == "torch":
        pytest.skip("the eager twins are plain PyTorch, which handles every transform itself")
    fns = _ops(device)
    x = fns["gan_logits"][1][0]
    grad = torch.func.grad(lambda z: K.gan_logits(z, extra_class=True).sum())(x)
    expected = torch.cat([torch.softmax(x[:, :-1], 1), -torch.ones(6, 1, dtype=x.dtype,
                                                                   device=device)], 1)
    torch.testing.assert_close(grad, expected)
    for op, (fn, inputs) in fns.items():
        name = op.removesuffix("_fixed_fake")
        with pytest.raises(NotImplementedError, match=f"{name} does not support torch.func.vmap"):
            torch.func.vmap(fn)(*(t.unsqueeze(0).expand(2, *t.shape) for t in inputs))
        with pytest.raises(NotImplementedError, match=f"{name} does not support forward-mode"):
            torch.func.jvp(fn, inputs, tuple(torch.ones_like(t) for t in inputs))
