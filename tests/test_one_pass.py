"""One D pass over the concatenated segments is the same function as one pass per segment:
with dropout off, the losses, every gradient of both players and D's BatchNorm running
statistics agree, for both recipes, under both devices' decisions, on the kernel path (the
Triton interpreter on a CPU) and on the Inductor-compiled path."""
import dataclasses

import pytest
import torch

import ssgan.kernels as K
import ssgan.train as T
from ssgan import devices
from ssgan.data import Dataset, Split
from conftest import KERNEL_PATH
from test_train import device_for


def _data() -> Dataset:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8, generator=g)
    return Dataset(Split(images, torch.arange(64) % 10), None, 10)


def _one_step(recipe: str, kind: str, backend: str, **decisions) -> tuple:
    """A fresh trainer's losses, both players' gradients and D's buffers after one forward,
    under ``kind``'s device decisions with ``decisions`` changed."""
    cfg = T.config_for(recipe, batch_size=16, labeled_batch_size=8 if recipe == "improved"
                       else 0, device=device_for(backend), progress=False,
                       out_dir="/nonexistent", drop_rate=0.0, labels=40, augment_shift=0,
                       d_size_mult=8, g_size_mult=8, kernels=backend)
    with devices.decisions_of(kind, **decisions), K.use_backend(backend):
        trainer = T.Trainer(cfg, _data())
        # the asked path, not a silent fallback
        assert K.backend_for(trainer.d.conv1.weight) == \
            ("inductor" if backend == "inductor" else KERNEL_PATH)
        losses = trainer._losses(torch.arange(16, device=trainer.device))
        d_grads = torch.autograd.grad(losses["d_loss"], list(trainer.d.parameters()),
                                      retain_graph=True)
        g_grads = torch.autograd.grad(losses["g_loss"], list(trainer.g.parameters()))
    buffers = [b for _, b in trainer.d.named_buffers()]
    return {k: losses[k].detach() for k in ("d_loss", "g_loss", "supervised", "hits")}, \
        d_grads, g_grads, buffers


@pytest.mark.parametrize("backend", ["triton", "inductor"])
@pytest.mark.parametrize("kind", ["cpu", "cuda"])
@pytest.mark.parametrize("recipe", ["notebook", "improved"])
def test_one_pass_equals_one_pass_per_segment(recipe, kind, backend, monkeypatch):
    # fp32 tolerance needs fp32 convolutions: cuDNN's default TF32 rounds differently in the
    # algorithms it picks for one pass and for each segment (a GPU only)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    per_segment = _one_step(recipe, kind, backend, one_pass_discriminator=False,
                            fused_batch_norm=False)
    for fused in (False, True):
        one_pass = _one_step(recipe, kind, backend, one_pass_discriminator=True,
                             fused_batch_norm=fused)
        for key, value in per_segment[0].items():
            torch.testing.assert_close(one_pass[0][key], value, rtol=1e-5, atol=1e-6)
        for group in (1, 2, 3):
            for a, b in zip(one_pass[group], per_segment[group]):
                torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_the_devices_decide_one_pass_where_launches_dominate():
    """The GPU runs one pass (bench.gpu_static's launch count), the CPU one pass per segment
    (bench.train_step's ssgan+one-pass rows); both run the fused batch norm (the GPU's launch
    count, the CPU's ssgan+aten-bn rows)."""
    assert devices.POLICIES["cuda"].one_pass_discriminator
    assert not devices.POLICIES["cpu"].one_pass_discriminator
    assert devices.POLICIES["cuda"].fused_batch_norm and devices.POLICIES["cpu"].fused_batch_norm
    with devices.decisions_of("cpu", one_pass_discriminator=True) as changed:
        assert devices.policy("cpu") == dataclasses.replace(devices.POLICIES["cpu"],
                                                            one_pass_discriminator=True)
        assert changed.one_pass_discriminator
    assert devices.policy("cpu") == devices.POLICIES["cpu"]
