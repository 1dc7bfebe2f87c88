import importlib
import os
import subprocess
import sys

import pytest
import torch

import ssgan.kernels as K
from ssgan.kernels import _backend
from ssgan.kernels import _private_api as private
from conftest import KERNEL_PATH


@pytest.mark.subprocess
def test_interpreter_is_reported_in_a_fresh_process():
    env = dict(os.environ, TRITON_INTERPRET="1")
    env.pop("SSGAN_KERNELS", None)
    out = subprocess.run(
        [sys.executable, "-c",
         "import ssgan.kernels as K, torch; print(K.backend_for(torch.zeros(1)))"],
        env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "interpret"


def _auto_path(x: torch.Tensor) -> str:
    if _backend.INTERPRET:
        return "interpret"
    return "triton" if x.is_cuda else "inductor"


def test_env_override_and_set_backend(monkeypatch):
    x = torch.zeros(2)
    monkeypatch.setenv("SSGAN_KERNELS", "torch")
    assert K.backend_for(x) == "torch"
    monkeypatch.setenv("SSGAN_KERNELS", "inductor")
    assert K.backend_for(x) == "inductor"
    monkeypatch.setenv("SSGAN_KERNELS", "auto")
    assert K.backend_for(x) == _auto_path(x)
    with K.use_backend("torch"):
        assert K.backend_for(x) == "torch"
    assert K.backend_for(x) == _auto_path(x)
    monkeypatch.setenv("SSGAN_KERNELS", "cuda-please")
    with pytest.raises(ValueError, match="SSGAN_KERNELS must be one of"):
        K.backend_for(x)
    with pytest.raises(ValueError, match="must be one of"):
        K.set_backend("fast")


def test_cpu_default_is_inductor_without_the_interpreter(monkeypatch):
    monkeypatch.setattr(_backend, "INTERPRET", False)
    monkeypatch.setenv("SSGAN_KERNELS", "triton")
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        K.backend_for(torch.zeros(1))
    monkeypatch.setenv("SSGAN_KERNELS", "auto")
    assert K.backend_for(torch.zeros(1)) == "inductor"


@pytest.mark.subprocess
def test_without_a_compiler_the_cpu_path_warns_once_and_runs_the_twins(tmp_path):
    """A fresh process whose C++ compiler is missing: the first op warns, every op still gives
    the twin's exact result, and backend_for then names the torch path."""
    code = """
import warnings, torch
import ssgan.kernels as K
x = torch.randn(4, 6, 5, requires_grad=True)
assert K.backend_for(x) == "inductor"
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    y = K.leaky_relu_dropout(x, p=0.5, seed=7)
    y.sum().backward()
    K.gan_logits(torch.randn(3, 11), extra_class=True)
messages = [str(w.message) for w in caught if "cannot be compiled" in str(w.message)]
assert len(messages) == 1, messages
assert "--kernels torch" in messages[0] and "no working C++ compiler" in messages[0]
assert K.backend_for(x) == "torch"
twin = K.reference.leaky_relu_dropout(x.detach(), p=0.5, seed=7)
assert torch.equal(y.detach(), twin)
print("ok")
"""
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "SSGAN_KERNELS")}
    env["TORCHINDUCTOR_CACHE_DIR"] = str(tmp_path)  # no cached kernel may hide the failure
    env["CXX"] = "/nonexistent/g++"  # Inductor's compiler, as a user's PATH may lack one
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-3000:]


def _head(x, scale, shift, target, mask):
    h = K.leaky_relu_dropout(x, p=0.3, seed=9, scale=scale, shift=shift)
    logits = h.mean(dim=(2, 3))[:, :11]
    return K.masked_cross_entropy(logits, target, mask) + K.gan_logits(
        logits, extra_class=True).sum()


@pytest.mark.parametrize("compile_backend", ["aot_eager", "inductor"])
def test_torch_compile_fullgraph_traces_the_ops(backend, device, compile_backend):
    private.dynamo_reset()
    x = torch.randn(4, 12, 3, 3, device=device, requires_grad=True)
    scale = torch.rand(12, device=device, requires_grad=True)
    shift = torch.randn(12, device=device, requires_grad=True)
    target = torch.tensor([1, -1, 10, 3], device=device)
    mask = torch.tensor([True, False, True, True], device=device)
    assert K.backend_for(x) == backend
    if backend == "torch" and compile_backend == "inductor":
        pytest.skip("Inductor takes minutes over the eager twins' unrolled Philox (the "
                    "reference path); aot_eager traces them")
    eager = _head(x, scale, shift, target, mask)
    eager_grads = torch.autograd.grad(eager, (x, scale, shift))
    compiled = torch.compile(_head, fullgraph=True, backend=compile_backend)
    out = compiled(x, scale, shift, target, mask)
    grads = torch.autograd.grad(out, (x, scale, shift))
    torch.testing.assert_close(out, eager)
    for a, b in zip(grads, eager_grads):
        torch.testing.assert_close(a, b)


def _ssgan_ops_dispatched(fn, *args) -> set:
    """Names of the ssgan custom ops that the dispatcher saw while ``fn(*args)`` ran."""
    seen = set()

    class Log(private.TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.namespace == "ssgan":
                seen.add(func.name())
            return func(*args, **(kwargs or {}))

    with Log():
        fn(*args)
    return seen


def test_eager_calls_skip_the_custom_op_dispatch_and_tracing_keeps_it(backend, device):
    if backend == "torch":
        pytest.skip("the eager twins are plain PyTorch: no custom op at all")
    x = torch.randn(4, 12, 3, 3, device=device, requires_grad=True)
    args = (x, torch.rand(12, device=device), torch.randn(12, device=device),
            torch.tensor([1, -1, 10, 3], device=device),
            torch.tensor([True, False, True, True], device=device))
    assert _ssgan_ops_dispatched(lambda: _head(*args).backward()) == set()
    graph_ops = set()

    def record(gm, example_inputs):  # the autograd.Functions' bodies are nested graphs
        graph_ops.update(str(n.target) for m in gm.modules()
                         if isinstance(m, torch.fx.GraphModule) for n in m.graph.nodes
                         if "ssgan" in str(n.target))
        return gm.forward

    private.dynamo_reset()
    torch.compile(_head, fullgraph=True, backend=record)(*args).backward()
    assert {"ssgan.leaky_relu_dropout_fwd.default", "ssgan.gan_logits_fwd.default",
            "ssgan.masked_cross_entropy_fwd.default"} <= graph_ops, graph_ops


def _opcheck_cases(device, backend):
    """(op, args) for every custom op, with a permuted, strided input where the op takes any.
    (The batch-norm halves take the segments' end rows, as the public op passes them.)"""
    # the package exports the ops under their modules' names, so fetch the modules themselves
    L, G, M, B, H, F = (importlib.import_module(f"ssgan.kernels.{name}") for name in
                        ("leaky_relu_dropout", "gan_logits", "masked_cross_entropy",
                         "batch_norm_leaky_relu_dropout", "gan_loss_head", "feature_matching"))
    seed = torch.tensor([5], device=device)
    permuted = torch.randn(3, 4, 2, 5, device=device).permute(0, 2, 1, 3)  # neither layout
    scale, shift = torch.rand(2, device=device) + 0.5, torch.randn(2, device=device)
    logits = torch.randn(6, 22, device=device)[:, ::2]
    target, weight = torch.randint(0, 11, (6,), device=device), torch.rand(6, device=device)
    lse = torch.logsumexp(logits, 1)
    return [
        (L._forward_op, (permuted, scale, shift, seed, 0.2, 0.5, False, backend)),
        (L._forward_op, (permuted.contiguous(memory_format=torch.channels_last), None, None,
                         seed, 0.2, 0.0, False, backend)),
        (L._forward_op, (permuted, scale, shift, seed, 0.2, 0.5, True, backend)),
        (L._backward_op, (torch.randn_like(permuted).contiguous(
            memory_format=torch.channels_last), permuted, scale, shift, seed, 0.2, 0.5, True,
            True, backend)),
        (G._forward_op, (logits, True, backend)),
        (G._backward_op, (torch.randn(6, device=device), logits, lse, False, backend)),
        (M._forward_op, (logits, target, weight, backend)),
        (M._backward_op, (torch.tensor(1.0, device=device), torch.tensor(3.0, device=device),
                          logits, target, weight, lse, backend)),
        (B._forward_op, (permuted, scale, shift, [1, 3], 1e-3, seed, 0.2, 0.5,
                         torch.zeros(2, device=device), torch.ones(2, device=device), 0.1,
                         False, backend)),
        (B._forward_op, (permuted.contiguous(memory_format=torch.channels_last), scale, shift,
                         [3], 1e-3, seed, 0.2, 0.0, None, None, 0.1, True, backend)),
        (B._backward_op, (torch.randn_like(permuted).contiguous(
            memory_format=torch.channels_last), permuted, scale, shift,
            torch.rand(2, 2, 2, device=device) + 0.5, [2, 3], seed, 0.2, 0.5, True, backend)),
        (H._forward_op, (logits, target[:2], weight[:2], [2, 2, 2], False, backend)),
        (H._backward_op, (torch.randn(6, device=device), torch.rand(6, device=device) + 1,
                          logits, target[:3], weight[:3], [3, 3], True, backend)),
        (F._forward_op, (logits[:4], logits[4:], backend)),
        (F._backward_op, (torch.tensor(0.7, device=device), torch.randn(11, device=device),
                          logits[:4], logits[4:], backend)),
    ]


@pytest.mark.parametrize("path", [KERNEL_PATH, "inductor"])
def test_opcheck_every_custom_op(device, path):
    """torch.library.opcheck: schema, fake (meta) implementation with the real op's strides,
    and AOT dispatch with dynamic shapes."""
    backend = "triton" if path == "interpret" else path
    for op, args in _opcheck_cases(device, backend):
        torch.library.opcheck(op, args)


@pytest.mark.parametrize("shape,channels_last", [((2, 2**25), True), ((1, 2**26, 2, 1), False),
                                                 ((4, 3, 32, 32), False)])
def test_launch_grids_stay_within_gpu_limits(shape, channels_last):
    """A GPU grid allows 2**31 - 1 programs on axis 0 but 65535 on axes 1 and 2: the
    activation kernels launch 1-D grids, whatever the number of channels."""
    L = importlib.import_module("ssgan.kernels._triton_leaky_relu_dropout")
    x = torch.empty(shape, device="meta")
    if channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    plan = L._Launch.plan(x)
    assert plan.channels_last == channels_last
    assert plan.grid[0] <= 2**31 - 1 and all(g <= 65535 for g in plan.grid[1:])
    assert plan.grid_a * plan.grid_b == plan.grid[0]


def test_views_beyond_int32_offsets_are_detected():
    """A (2**22, 1024)[:, :11] view has few elements but offsets beyond int32: the head and
    the CE copy such views to contiguous before a kernel indexes them."""
    from ssgan.kernels import _checks
    assert not _checks.int32_addressable(torch.empty(2**22, 1024, device="meta")[:, :11])
    assert _checks.int32_addressable(torch.empty(2**22, 11, device="meta"))
    assert _checks.int32_addressable(torch.empty(0, 11, device="meta"))


def test_without_triton_the_triton_path_takes_the_twins_after_one_warning(monkeypatch):
    """What a CUDA tensor (or the interpreter) meets where triton is not installed: the eager
    twins and one warning naming triton; asking for triton by name says how to install it."""
    monkeypatch.setattr(_backend, "triton_available", lambda: False)
    monkeypatch.setattr(_backend, "INTERPRET", True)  # the Triton path, as a CUDA tensor's
    monkeypatch.setattr(_backend, "_warned", set())
    x = torch.randn(3, 4)
    with pytest.warns(RuntimeWarning, match="triton is not installed") as caught:
        assert K.backend_for(x) == "torch"
        assert K.backend_for(x) == "torch"
    assert len(caught) == 1
    torch.testing.assert_close(K.gan_logits(x), torch.logsumexp(x, 1))
    with K.use_backend("triton"), pytest.raises(ValueError, match="pip install triton"):
        K.backend_for(x)
    with K.use_backend("inductor"):
        assert K.backend_for(x) in ("inductor", "torch")  # the CPU path never needs triton
