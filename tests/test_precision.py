"""``--precision bf16``: mixed precision as Lightning's bf16-mixed means it. A bf16 step tracks
the fp32 step from the same state; weights, gradients, Adam's state and BatchNorm's running
statistics stay fp32; a checkpoint resumes across precisions; a CPU without native bf16 is
refused in one line."""
import json

import pytest
import torch

import ssgan.train as T
from ssgan import cli, precision
from helpers import needs_native_bf16_cpu
from test_train import IMPROVED_KNOBS, tiny_config, tiny_dataset

STEPS = 3


def _trained(tmp_path, prec: str, kernels: str) -> T.Trainer:
    trainer = T.Trainer(tiny_config(tmp_path / prec, precision=prec, kernels=kernels,
                                    **IMPROVED_KNOBS), tiny_dataset())
    torch.manual_seed(0)  # the same dropout seeds (and masks, on every path) for both
    trainer.losses = [trainer.step(torch.arange(16) + 16 * (i % 3)) for i in range(STEPS)]
    return trainer


@needs_native_bf16_cpu
@pytest.mark.parametrize("kernels", ["torch", "inductor"])
def test_a_bf16_step_tracks_the_fp32_step_and_keeps_fp32_state(tmp_path, kernels):
    """From the same initial state and batches, the bf16 step on ``kernels`` against the fp32
    step on the eager twins (the reference): the losses agree to bf16 accuracy, and the
    weight updates point the same way (Adam's early steps are about lr * sign(gradient), so
    their cosine compares the gradients' signs: random signs would give about 0)."""
    start = T.Trainer(tiny_config(tmp_path / "init", **IMPROVED_KNOBS), tiny_dataset())
    initial = {n: p.detach().clone() for n, p in start.d.named_parameters()}
    runs = {"fp32": _trained(tmp_path, "fp32", "torch"),
            "bf16": _trained(tmp_path, "bf16", kernels)}
    for a, b in zip(runs["fp32"].losses, runs["bf16"].losses):
        for key in ("d_loss", "g_loss", "supervised"):
            assert float(b[key]) == pytest.approx(float(a[key]), rel=0.05, abs=0.02), key
    moves = {prec: torch.cat([(p.detach() - initial[n]).flatten()
                              for n, p in run.d.named_parameters()])
             for prec, run in runs.items()}
    assert torch.nn.functional.cosine_similarity(moves["fp32"], moves["bf16"], dim=0) > 0.9
    bf16 = runs["bf16"]
    for model, opt in ((bf16.d, bf16.opt_d), (bf16.g, bf16.opt_g)):
        for p in model.parameters():
            assert p.dtype == p.grad.dtype == opt.state[p]["exp_avg"].dtype == torch.float32
    for (name, a), (_, b) in zip(runs["fp32"].d.named_buffers(), bf16.d.named_buffers()):
        if "running" in name:
            assert b.dtype == torch.float32, name
            torch.testing.assert_close(b, a, rtol=0.05, atol=0.05, msg=name)


@needs_native_bf16_cpu
def test_the_supervised_only_step_in_bf16_tracks_fp32_and_hands_adam_fp32_gradients(tmp_path):
    losses = {}
    for prec in ("fp32", "bf16"):
        trainer = T.Trainer(tiny_config(tmp_path / prec, precision=prec, kernels="torch",
                                        supervised_only=True), tiny_dataset())
        torch.manual_seed(0)
        losses[prec] = [float(trainer.step(torch.arange(16))["supervised"].detach())
                        for _ in range(STEPS)]
        for p in trainer.d.parameters():
            assert p.dtype == p.grad.dtype == trainer.opt_d.state[p]["exp_avg"].dtype \
                == torch.float32
    assert losses["bf16"] == pytest.approx(losses["fp32"], rel=0.05, abs=0.02)


@needs_native_bf16_cpu
def test_the_precision_is_recorded_and_a_checkpoint_resumes_across_precisions(tmp_path,
                                                                               capsys):
    T.Trainer(tiny_config(tmp_path, epochs=1), tiny_dataset()).fit()
    capsys.readouterr()
    resumed = T.Trainer(tiny_config(tmp_path, epochs=2, resume=True, precision="bf16"),
                        tiny_dataset())
    resumed.fit()
    out = capsys.readouterr().out
    assert "resuming a fp32 checkpoint with --precision bf16" in out
    run = tmp_path / "run"
    assert json.loads((run / "config.json").read_text())["precision"] == "bf16"
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert state["config"]["precision"] == "bf16" and state["epoch"] == 2
    assert all(t.dtype == torch.float32 for t in state["discriminator"].values()
               if t.is_floating_point())


def test_a_cpu_without_native_bf16_is_refused_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(precision, "cpu_flags", lambda: {"sse4_2", "avx2", "avx512f"})
    with pytest.raises(ValueError, match="AVX512-BF16 or AMX.*--precision fp32"):
        T.Trainer(tiny_config(tmp_path, precision="bf16"), tiny_dataset())
    assert cli.main(["train", "--precision", "bf16", "--device", "cpu", "--out-dir",
                     str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--precision fp32" in err and "AVX512-BF16" in err
    monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx512f", "avx512_bf16"})
    precision.check_precision("bf16", torch.device("cpu"))  # native: accepted
    with pytest.raises(ValueError, match="--precision must be one of fp32, bf16"):
        precision.check_precision("fp16", torch.device("cpu"))


def test_cpu_flags_are_read_from_proc_cpuinfo(tmp_path, monkeypatch):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse avx512f avx512_bf16\n\n"
                    "processor\t: 1\nflags\t\t: fpu sse avx512f avx512_bf16\n")
    monkeypatch.setattr(precision, "CPUINFO", info)
    assert precision.cpu_flags() == {"fpu", "sse", "avx512f", "avx512_bf16"}
    assert precision.missing_bf16_support(torch.device("cpu")) is None
    monkeypatch.setattr(precision, "CPUINFO", tmp_path / "absent")
    assert "native bf16" in precision.missing_bf16_support(torch.device("cpu"))


def test_the_bf16_weight_copies_give_autocasts_gradients_in_one_cast_each_way():
    """mixed_precision casts the convolution and linear weights of every model it is given in
    one launch, and StepWeights.master_grads their gradients back in one more, where autocast
    casts each: the same numbers either way (both round each weight to bf16 once and hand
    fp32 parameters the upcast bf16 gradient). Each model's gradients reach only its own
    copies, and a model's fp32_layers keep fp32 weights."""
    from ssgan.kernels._private_api import TorchDispatchMode
    from ssgan.models import Discriminator, Generator

    class Casts(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops.append(func.__name__.split(".")[0])
            return func(*args, **(kwargs or {}))

    torch.manual_seed(0)
    d = Discriminator(3, 10, size_mult=8, drop_rate=0.0).to(memory_format=torch.channels_last)
    g = Generator(16, 3, 32, size_mult=4).to(memory_format=torch.channels_last)
    z = torch.rand(6, 16, dtype=torch.bfloat16) * 2 - 1  # as the trainer makes its noise
    grads = {}
    for way in ("autocast", "copies"):
        with Casts() as seen:
            context = (torch.autocast("cpu", torch.bfloat16) if way == "autocast" else
                       precision.mixed_precision("bf16", torch.device("cpu"), d, g))
            with context as weights:
                logits, features = d.classify(g(z))
                if way == "copies":
                    assert d.conv1.weight.dtype == g.deconv1.weight.dtype == torch.bfloat16
                    assert d.classifier.weight.dtype == torch.float32  # an fp32 layer
            loss = logits.square().mean() + features.mean()
            d_params = list(d.parameters())
            if way == "autocast":
                found = torch.autograd.grad(loss, d_params)
            else:
                found = weights.master_grads(d_params, torch.autograd.grad(
                    loss, weights.leaves(d_params)))
        assert logits.dtype == features.dtype == torch.float32
        grads[way] = dict(zip((n for n, _ in d.named_parameters()), found))
        if way == "copies":
            assert seen.ops.count("_foreach_copy_") == 2 and "_to_copy" not in seen.ops
    assert all(grad.dtype == torch.float32 for grad in grads["copies"].values())
    for name, grad in grads["autocast"].items():
        torch.testing.assert_close(grads["copies"][name], grad, rtol=1e-5, atol=1e-6,
                                   msg=name)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_spatial_mean_is_fp32_and_its_gradient_keeps_the_inputs_dtype_and_layout(dtype):
    x = torch.randn(5, 7, 3, 4, dtype=dtype).contiguous(memory_format=torch.channels_last)
    leaf = x.detach().requires_grad_()
    out = precision.spatial_mean(leaf, torch.float32)
    truth_leaf = x.detach().double().requires_grad_()
    truth = truth_leaf.mean(dim=(2, 3))
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), truth)
    g = torch.randn(5, 7, dtype=torch.float64)
    out.backward(g.float())
    truth.backward(g)
    assert leaf.grad.dtype == dtype
    assert leaf.grad.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(leaf.grad.double(), truth_leaf.grad,
                               **({} if dtype == torch.float32 else dict(rtol=1e-2, atol=1e-3)))
    x64 = torch.randn(3, 4, 2, 5, dtype=torch.float64, requires_grad=True)
    fn = lambda t: precision.spatial_mean(t, torch.float64)
    assert torch.autograd.gradcheck(fn, (x64,)) and torch.autograd.gradgradcheck(fn, (x64,))
