"""Per-call cost of the two ways to run the compiled twins on a CPU, in one process.

torch.compile: the twin under ``torch.compile(dynamic=True)`` (the CPU path before commit
6c87d78); fx: ``ssgan.kernels._inductor.call`` (make_fx + Inductor's compile_fx_inner, the
path after it). Both run the same Inductor C++ code; the difference is the wrapper around it.
Also the whole op, forward+backward, against stock PyTorch. Medians of 7 repeats of N calls,
the variants interleaved in each repeat. Run: python overhead.py (2 threads).
"""
import statistics
import time

import torch

import ssgan.kernels as K
from ssgan.kernels import _inductor
from ssgan.kernels import reference as ref

torch.set_num_threads(2)


def per_call_us(fns: dict, calls: int = 2000, repeats: int = 7) -> dict:
    for fn in fns.values():
        for _ in range(100):
            fn()
    samples = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            for _ in range(calls):
                fn()
            samples[name].append((time.perf_counter() - start) / calls * 1e6)
    return {name: statistics.median(v) for name, v in samples.items()}


def compiled_twin(fn):
    compiled = torch.compile(fn, dynamic=True)

    def run(*args):
        with torch.no_grad():
            return compiled(*args)
    return run


def main() -> None:
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    z = torch.randn(128, 10)
    lse = torch.logsumexp(z, 1)
    dout = torch.randn(128)
    twin_fwd, twin_bwd = compiled_twin(ref.gan_logits_forward), compiled_twin(ref.gan_logits_backward)
    print("\n== gan_logits halves at 128x10, one call, us (no autograd)")
    for name, us in per_call_us({
        "stock torch.logsumexp": lambda: torch.logsumexp(z, 1),
        "forward, torch.compile": lambda: twin_fwd(z, False),
        "forward, fx": lambda: _inductor.call(ref.gan_logits_forward, z, False),
        "backward, torch.compile": lambda: twin_bwd(dout, z, lse, False),
        "backward, fx": lambda: _inductor.call(ref.gan_logits_backward, dout, z, lse, False),
    }).items():
        print(f"{name:28s} {us:7.1f}")

    x = torch.randn(128, 64, 256).permute(0, 2, 1).contiguous().permute(0, 2, 1)  # D.act1, NCS
    seed = torch.tensor([123])
    x4 = torch.randn(128, 128, 16)
    scale, shift = torch.rand(128) + 0.5, torch.randn(128)
    lrd = compiled_twin(ref.leaky_relu_dropout_forward)
    print("\n== leaky_relu_dropout forward, one call, us (no autograd)")
    for name, us in per_call_us({
        "D.act1 p=0.5, torch.compile": lambda: lrd(x, None, None, seed, 0.2, 0.5),
        "D.act1 p=0.5, fx": lambda: _inductor.call(ref.leaky_relu_dropout_forward, x, None,
                                                    None, seed, 0.2, 0.5),
        "D.act4 affine p=0, torch.compile": lambda: lrd(x4, scale, shift, None, 0.2, 0.0),
        "D.act4 affine p=0, fx": lambda: _inductor.call(ref.leaky_relu_dropout_forward, x4,
                                                         scale, shift, None, 0.2, 0.0),
    }, calls=200).items():
        print(f"{name:34s} {us:8.1f}")

    zg = z.clone().requires_grad_()
    target = torch.randint(0, 10, (128,))
    mask = torch.rand(128) < 0.5

    def step(out_fn, grad):
        def run():
            out_fn().backward(grad)
            zg.grad = None
        return run
    one = torch.tensor(1.0)
    print("\n== whole op at 128x10, forward+backward, us")
    for name, us in per_call_us({
        "gan_logits, stock": step(lambda: torch.logsumexp(zg, 1), dout),
        "gan_logits, ssgan": step(lambda: K.gan_logits(zg), dout),
        "masked CE, stock": step(lambda: _stock_ce(zg, target, mask), one),
        "masked CE, ssgan": step(lambda: K.masked_cross_entropy(zg, target, mask), one),
    }).items():
        print(f"{name:28s} {us:7.1f}")


def _stock_ce(z, target, mask):
    ce = torch.nn.functional.cross_entropy(z, target.clamp_min(0), reduction="none")
    m = mask.to(ce.dtype)
    return (ce * m).sum() / m.sum().clamp_min(1.0)


if __name__ == "__main__":
    main()
