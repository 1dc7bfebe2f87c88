"""The mixed-precision Adam (the bf16 step's optimizer where the device keeps the bf16 copies):
PyTorch's Adam on the fp32 weights from bf16 gradients, the copies written in the same pass;
and the trainer's step with it equals the step that casts each way."""
import pytest
import torch

import ssgan.kernels as K
import ssgan.train as T
from ssgan import devices
from ssgan.kernels import reference as ref
from helpers import needs_native_bf16_cpu, randn
from test_train import IMPROVED_KNOBS, tiny_config, tiny_dataset

# odd sizes (one element, a partial block, several blocks), channels-last conv weights
SHAPES = [(6, 3, 3, 3), (7,), (1,), (33, 5, 3, 3), (1500,)]


def _tensors(device):
    params = [randn(*s, device=device) for s in SHAPES]
    params = [p.contiguous(memory_format=torch.channels_last) if p.dim() == 4 else p
              for p in params]
    # every other weight runs as a bf16 copy; the rest (a model's fp32 layers) have none
    copies = [torch.empty_like(p, dtype=torch.bfloat16) if i % 2 == 0 else p
              for i, p in enumerate(params)]
    return params, copies


@pytest.mark.parametrize("path", ["kernel", "torch"])
def test_it_is_pytorchs_adam_and_writes_the_copies(device, monkeypatch, path):
    """Against torch.optim.Adam (fused) handed the same gradients widened to fp32, over a few
    steps: the weights, both moments and the step count; each copy is its weight in bf16
    (the interpreter rounds towards zero: one bf16 unit)."""
    monkeypatch.setenv("SSGAN_KERNELS", "triton" if path == "kernel" else "torch")
    params, copies = _tensors(device)
    twins = [p.clone().requires_grad_() for p in params]
    opt = torch.optim.Adam(twins, lr=3e-3, betas=(0.5, 0.999), fused=device.type == "cuda")
    exp_avgs, exp_avg_sqs = ([torch.zeros_like(p) for p in params] for _ in range(2))
    step, lr = torch.zeros((), device=device), torch.tensor(3e-3, device=device)
    for _ in range(3):
        grads = [randn(*p.shape, device=device).contiguous(
            memory_format=torch.channels_last) if p.dim() == 4 else randn(*p.shape,
                                                                          device=device)
            for p in params]
        grads = [g.bfloat16() if c is not p else g for g, c, p in zip(grads, copies, params)]
        for twin, grad in zip(twins, grads):
            twin.grad = grad.float()
        opt.step()
        step += 1
        K.mixed_precision_adam_(params, grads, exp_avgs, exp_avg_sqs, copies, step, lr,
                                beta1=0.5)
    for p, twin, m, v, c in zip(params, twins, exp_avgs, exp_avg_sqs, copies):
        state = opt.state[twin]
        torch.testing.assert_close(p, twin.detach(), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(m, state["exp_avg"], rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(v, state["exp_avg_sq"], rtol=1e-5, atol=1e-9)
        if c is not p:
            assert c.dtype == torch.bfloat16 and c.stride() == p.stride()
            torch.testing.assert_close(c.float(), p, rtol=2 ** -7, atol=0)
    assert float(step) == float(opt.state[twins[0]]["step"])


def test_gradients_in_other_strides_are_read_in_the_weights_layout(device, monkeypatch):
    monkeypatch.setenv("SSGAN_KERNELS", "triton")
    params, copies = _tensors(device)
    before = [p.clone() for p in params]
    # channels-first conv gradients, bf16 where the weight has a copy (as the step hands them)
    grads = [randn(*p.shape, device=device).to(c.dtype) for p, c in zip(params, copies)]
    state = [[torch.zeros_like(p) for p in params] for _ in range(2)]
    one = torch.ones((), device=device)
    K.mixed_precision_adam_(params, grads, *state, copies, one, one * 1e-2, beta1=0.9)
    truth = [b.clone() for b in before]
    ref.mixed_precision_adam_(truth, grads, *[[torch.zeros_like(p) for p in params]
                                              for _ in range(2)], truth, one, one * 1e-2,
                              0.9, 0.999, 1e-8)
    for p, t in zip(params, truth):
        torch.testing.assert_close(p, t, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("change,match", [
    (lambda a: a.update(grads=a["grads"][:-1]), "grads must hold one tensor per parameter"),
    (lambda a: a.update(params=[a["params"][0].double()] + a["params"][1:]),
     r"params\[0\] must be float32"),
    (lambda a: a.update(exp_avgs=[torch.zeros(2)] + a["exp_avgs"][1:]),
     r"exp_avgs\[0\] must match params\[0\]"),
    (lambda a: a.update(exp_avg_sqs=[a["exp_avg_sqs"][0].bfloat16()] + a["exp_avg_sqs"][1:]),
     r"exp_avg_sqs\[0\] must be float32"),
    (lambda a: a.update(step=torch.zeros(2)), "step must be a one-element tensor"),
])
def test_bad_arguments_are_clear_errors(change, match):
    params, copies = _tensors(torch.device("cpu"))
    args = dict(params=params, grads=[torch.randn_like(p) for p in params],
                exp_avgs=[torch.zeros_like(p) for p in params],
                exp_avg_sqs=[torch.zeros_like(p) for p in params], copies=copies,
                step=torch.ones(()), lr=torch.tensor(1e-3))
    change(args)
    with pytest.raises(ValueError, match=match):
        K.mixed_precision_adam_(**args, beta1=0.5)


@needs_native_bf16_cpu
def test_the_step_with_kept_copies_equals_the_step_that_casts(tmp_path):
    """Where the device keeps the bf16 copies (a GPU's decision, taken here on the CPU), Adam
    reads the bf16 gradients and writes the copies. From the same state and batch, one step
    equals the step that casts the weights and gradients each way: the same losses, weights
    and Adam state to fp32 rounding (the two Adams differ in the last bits). Over later steps
    the copies stay the weights in bf16, and a weight changed elsewhere (a checkpoint) is
    copied again before the next step. On the kernel path (the twin's is the op's test)."""
    trainers = {}
    for kept in (False, True):
        with devices.decisions_of("cpu", adam_writes_bf16_copies=kept):
            trainers[kept] = T.Trainer(tiny_config(tmp_path / str(kept), precision="bf16",
                                                   kernels="triton", **IMPROVED_KNOBS),
                                       tiny_dataset())
    cast, fused = trainers[False], trainers[True]
    assert cast.kept_copies is None and fused.kept_copies is not None

    def step(trainer, kept, i):
        torch.manual_seed(i)  # the same dropout seeds for both
        with devices.decisions_of("cpu", adam_writes_bf16_copies=kept):
            return trainer.step(torch.arange(16) + 16 * (i % 3))

    first = [step(cast, False, 0), step(fused, True, 0)]
    for key in ("d_loss", "g_loss"):
        assert torch.equal(first[1][key], first[0][key])
    for model, opt in (("d", "opt_d"), ("g", "opt_g")):
        for p, q in zip(getattr(cast, model).parameters(), getattr(fused, model).parameters()):
            torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-7)
            a, b = getattr(cast, opt).state[p], getattr(fused, opt).state[q]
            torch.testing.assert_close(b["exp_avg"], a["exp_avg"], rtol=1e-5, atol=1e-9)
            torch.testing.assert_close(b["exp_avg_sq"], a["exp_avg_sq"], rtol=1e-5, atol=1e-12)
            assert b["exp_avg"].stride() == q.stride() and float(b["step"]) == 1
            assert q.grad is None   # the bf16 gradients went to Adam, not to .grad
    kept = fused.kept_copies
    for i in (1, 2):
        step(fused, True, i)
        for master, copy in zip(kept.masters, kept.copies):
            # the interpreter rounds towards zero (one bf16 unit); a GPU to nearest
            torch.testing.assert_close(copy.float(), master.detach(), rtol=2 ** -7, atol=0)
    fused.d.load_state_dict(cast.d.state_dict())   # moves the weights' version counters
    kept.refresh()
    for master, copy in zip(kept.masters, kept.copies):
        assert torch.equal(copy, master.detach().bfloat16())
