import pytest
import torch
import torch.nn.functional as F

import ssgan.kernels as K
import ssgan.models as models
from ssgan import devices
from conftest import KERNEL_PATH
from ssgan.losses import discriminator_loss, feature_matching_loss, head_weights
from ssgan.models import BatchNorm, Discriminator, Generator, LeakyBlock, count_parameters

# The notebook's architecture, counted by hand from its TensorFlow layers (conv/dense weights +
# biases, BN gamma + beta), for 3 input channels and 10 classes:
#   D: conv1 1,792 + conv2 36,928 + conv3 36,928 + bn3 128 + conv4 73,856 + bn4 256
#      + conv5 147,584 + bn5 256 + conv7 147,584 + dense 1,290 = 446,602
#      (its dead bn2 (128), conv6 (147,584) and bn6 (256) would make 594,570 variables)
#   G: dense 206,848 + bn 256 + deconv1 204,864 + bn 128 + deconv2 51,232 + bn 64
#      + deconv3 2,403 = 465,795
NOTEBOOK_D_PARAMS = 446_602
NOTEBOOK_G_PARAMS = 465_795


def test_parameter_counts_equal_the_notebook():
    assert count_parameters(Discriminator()) == NOTEBOOK_D_PARAMS
    assert count_parameters(Generator()) == NOTEBOOK_G_PARAMS
    assert count_parameters(Discriminator(extra_class=True)) == NOTEBOOK_D_PARAMS - 1290 + 1419
    # 1 channel (MNIST): only the first and last convolutions change
    assert count_parameters(Discriminator(in_channels=1)) == NOTEBOOK_D_PARAMS - 2 * 9 * 64
    assert count_parameters(Generator(out_channels=1)) == NOTEBOOK_G_PARAMS - 2 * 25 * 32 - 2


@pytest.mark.parametrize("channels,size,extra", [(3, 32, False), (1, 32, True), (3, 48, False)])
def test_shapes(channels, size, extra):
    d = Discriminator(channels, 10, size_mult=8, extra_class=extra)
    g = Generator(16, channels, size, size_mult=8)
    z = torch.rand(5, 16) * 2 - 1
    fake = g(z)
    assert fake.shape == (5, channels, size, size)
    assert fake.abs().max() <= 1
    logits, gan, features = d(fake)
    assert logits.shape == (5, 10 + extra) and gan.shape == (5,) and features.shape == (5, 16)


def test_generator_rejects_bad_size():
    with pytest.raises(ValueError, match="multiple of 8.*--image-size"):
        Generator(image_size=30)


@pytest.mark.parametrize("kind", ["cpu", "cuda"])
def test_a_batch_norm_block_runs_the_ops_its_device_decides(monkeypatch, kind):
    """Where the device fuses its batch norm (the GPU), every block with batch statistics calls
    the fused batch-norm op, with or without dropout; elsewhere a block without dropout calls
    no fused op, and one with dropout calls leaky_relu_dropout on the normalized input, with
    no scale or shift."""
    calls = []
    for name in ("leaky_relu_dropout", "batch_norm_leaky_relu_dropout"):
        def spy(*args, _name=name, _real=getattr(K, name), **kwargs):
            calls.append((_name, kwargs.get("p"), "scale" in kwargs))
            return _real(*args, **kwargs)
        monkeypatch.setattr(models.K, name, spy)
    x = torch.randn(6, 5, 4, 4) * 2 + 1
    with devices.decisions_of(kind) as decided:
        LeakyBlock(5, alpha=0.2)(x)
        LeakyBlock(5, alpha=0.2, p=0.5)(x)
    if decided.fused_batch_norm:
        assert calls == [("batch_norm_leaky_relu_dropout", 0.0, False),
                         ("batch_norm_leaky_relu_dropout", 0.5, False)]
    else:
        assert calls == [("leaky_relu_dropout", 0.5, False)]


def test_block_equals_batchnorm_then_leaky_relu():
    torch.manual_seed(0)
    x = torch.randn(6, 5, 4, 4)
    block = LeakyBlock(5, alpha=0.2)
    bn = torch.nn.BatchNorm2d(5, eps=1e-3)
    with torch.no_grad():
        for layer in (block.bn, bn):
            layer.weight.copy_(torch.linspace(0.5, 1.5, 5))
            layer.bias.copy_(torch.linspace(-1, 1, 5))
    torch.testing.assert_close(block(x), F.leaky_relu(bn(x), 0.2))
    torch.testing.assert_close(block.bn.running_mean, bn.running_mean)
    torch.testing.assert_close(block.bn.running_var, bn.running_var)
    block.eval(), bn.eval()
    torch.testing.assert_close(block(x + 1), F.leaky_relu(bn(x + 1), 0.2))


@pytest.mark.parametrize("channels_last", [False, True])
def test_block_gradients_equal_batchnorm_then_leaky_relu(channels_last):
    layout = torch.channels_last if channels_last else torch.contiguous_format
    x = (torch.randn(7, 5, 3, 6) * 3 + 1).contiguous(memory_format=layout).requires_grad_()
    dy = torch.randn(7, 5, 3, 6)
    block = LeakyBlock(5, alpha=0.2)
    bn = torch.nn.BatchNorm2d(5, eps=1e-3)
    weight, bias = torch.rand(5) + 0.5, torch.randn(5)
    with torch.no_grad():
        for layer in (block.bn, bn):
            layer.weight.copy_(weight)
            layer.bias.copy_(bias)
    ours = torch.autograd.grad(block(x), (x, block.bn.weight, block.bn.bias), dy)
    stock = torch.autograd.grad(F.leaky_relu(bn(x), 0.2), (x, bn.weight, bn.bias), dy)
    for a, b in zip(ours, stock):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_generated_batches_do_not_touch_running_stats():
    d = Discriminator(1, 10, size_mult=4)
    before = [m.running_mean.clone() for m in d.modules() if isinstance(m, BatchNorm)]
    d(torch.randn(4, 1, 32, 32), update_stats=False)
    after = [m.running_mean for m in d.modules() if isinstance(m, BatchNorm)]
    assert all(torch.equal(a, b) for a, b in zip(before, after))
    d(torch.randn(4, 1, 32, 32))
    assert not all(torch.equal(a, b) for a, b in zip(before, after))


def test_eval_bn_modes():
    d = Discriminator(1, 10, size_mult=4).eval()
    x = torch.randn(8, 1, 32, 32) * 3 + 2
    running = d(x)[0]
    d.set_eval_bn("batch")
    batch = d(x)[0]
    assert not torch.allclose(running, batch)
    d.set_eval_bn("recalibrated")
    # recalibrated evaluates with running statistics (the trainer re-estimates them first),
    # never with the test batch's own
    recalibrated = d(x)[0]
    assert not torch.allclose(recalibrated, batch)
    torch.testing.assert_close(recalibrated, running)
    with pytest.raises(ValueError, match="--eval-bn"):
        d.set_eval_bn("both")


def test_recalibrate_bn_averages_real_batch_statistics_without_dropout():
    torch.manual_seed(0)
    d = Discriminator(1, 10, size_mult=4)
    d.train()
    batches = [torch.randn(8, 1, 32, 32) * 2 + 1 for _ in range(3)]
    d.recalibrate_bn(batches)
    # truth: conv3's input statistics per batch with dropout off, averaged
    means, variances = [], []
    for b in batches:
        h = F.leaky_relu(d.conv1(b), 0.2)
        h = F.leaky_relu(d.conv2(h), 0.2)
        h = d.conv3(h)
        means.append(h.mean((0, 2, 3)))
        variances.append(h.var((0, 2, 3), unbiased=True))
    torch.testing.assert_close(d.act3.bn.running_mean, torch.stack(means).mean(0))
    torch.testing.assert_close(d.act3.bn.running_var, torch.stack(variances).mean(0))
    assert d.training and d.act1.p == 0.5 and d.input_dropout.p == 0.2
    assert d.act3.bn.momentum == 0.1


def test_models_on_kernel_path_match_twins(device, monkeypatch):
    """The same models, seeds and inputs through the Triton path and through the twins."""
    torch.manual_seed(0)
    d = Discriminator(3, 10, size_mult=4, extra_class=True).to(device)
    g = Generator(8, 3, 32, size_mult=4).to(device)
    z = torch.rand(3, 8, device=device)
    results = []
    for backend in ("triton", "torch"):
        monkeypatch.setenv("SSGAN_KERNELS", backend)
        assert K.backend_for(z) == (KERNEL_PATH if backend == "triton" else "torch")
        torch.manual_seed(1)
        fake = g(z)
        logits, gan, features = d(fake)
        grads = torch.autograd.grad(gan.sum() + features.sum(), list(d.parameters()))
        results.append((fake, logits, gan, features, grads))
    for a, b in zip(*results):
        for x, y in zip(a if isinstance(a, tuple) else (a,), b if isinstance(b, tuple) else (b,)):
            torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-5)


def test_discriminator_loss_weighs_the_heads_terms_in_one_launch_each_way():
    from bench.gpu_static import StepCounter

    head = torch.rand(6, requires_grad=True)  # supervised, bce_real, bce_fake, entropy, counts
    sup, real, fake, entropy = head.detach()[:4]
    share = torch.tensor(0.25)
    out = discriminator_loss(head, head_weights(0.5, 0.3), supervised_share=share)
    torch.testing.assert_close(out["supervised"], sup * share)
    torch.testing.assert_close(out["d_loss"], sup * share + 0.5 * (real + fake) + 0.3 * entropy)
    assert not out["bce_real"].requires_grad  # the reported terms
    weights, two = head_weights(), torch.tensor(2.0)
    counter = StepCounter()  # the ops that launch a kernel
    with counter.mode:
        plain = discriminator_loss(head, weights)
        grad, = torch.autograd.grad(plain["d_loss"], head, two)
    torch.testing.assert_close(plain["d_loss"], sup + real + fake)
    torch.testing.assert_close(grad, torch.tensor([2.0, 2, 2, 0, 0, 0]))
    assert counter.ops == {"dot": 1, "mul": 1}, counter.ops


def test_feature_matching_loss_matches_formula():
    real, fake = torch.randn(7, 5), torch.randn(3, 5)
    expected = sum(abs(real[:, j].mean() - fake[:, j].mean()) for j in range(5)) / 5
    torch.testing.assert_close(feature_matching_loss(real, fake), expected)
    assert feature_matching_loss(real, real).item() == 0


def test_a_block_with_nothing_to_fuse_runs_atens_leaky_relu(monkeypatch):
    calls = []
    monkeypatch.setattr(K, "leaky_relu_dropout", lambda x, **kw: calls.append(kw) or x)
    x = torch.randn(4, 6, 5, 5)
    assert torch.equal(LeakyBlock(None, 0.2)(x), F.leaky_relu(x, 0.2))
    assert torch.equal(LeakyBlock(None, 0.2, p=0.5).eval()(x), F.leaky_relu(x, 0.2))
    assert LeakyBlock(None, 1.0, p=0.2).eval()(x) is x
    assert not calls
    # dropout in training: the fused op; a BatchNorm where the device does not fuse it: ATen's
    # batch norm and, without dropout, ATen's leaky ReLU
    LeakyBlock(None, 0.2, p=0.5)(x)
    with devices.decisions_of("cpu", fused_batch_norm=False):
        LeakyBlock(6, 0.2)(x)
        LeakyBlock(6, 0.2, p=0.5)(x)
    assert [kw["p"] for kw in calls] == [0.5, 0.5] and not any("scale" in kw for kw in calls)
