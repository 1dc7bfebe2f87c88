"""The fixed cost of a folded-BN block (affine, leaky ReLU, no dropout), forward+backward, on
ssgan's CPU path and in stock PyTorch: at 2x128x1x1 the work is nil and what remains is the
calls; at 128x128x4x4 (D.act4/5, G.act0) it is next to the work. Medians of 7 repeats of 2000
calls. Also, to split ssgan's time: its two compiled graphs called alone (``_inductor.call``, as
the op's halves call them), and an ``autograd.Function`` that does nothing but save its three
inputs and return a view (the autograd machinery every custom op pays; at 2x128x1x1 only, where
no gradient copy is hidden in it). Under the benchmarks' allocator settings
(``keep_freed_memory``), so stock's temporaries do not fault pages in on every call.
Run: python floor.py (2 threads)."""
import statistics
import time

import torch
import torch.nn.functional as F

import ssgan.kernels as K
from ssgan.cpu_memory import keep_freed_memory
from ssgan.kernels import _inductor, reference

keep_freed_memory()
torch.set_num_threads(2)


def per_call_us(fn, calls: int = 2000, repeats: int = 7) -> float:
    for _ in range(200):
        fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        samples.append((time.perf_counter() - start) / calls * 1e6)
    return statistics.median(samples)


class _NoOp(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, scale, shift):
        ctx.save_for_backward(x, scale, shift)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, dy):
        return dy, None, None


def main() -> None:
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}; fwd+bwd, us")
    for shape in [(2, 128, 1, 1), (128, 128, 4, 4)]:
        x = torch.randn(*shape, requires_grad=True)
        scale = (torch.rand(128) + 0.5).requires_grad_()
        shift = torch.randn(128, requires_grad=True)
        dy = torch.randn(*shape)

        def clear():
            x.grad = scale.grad = shift.grad = None

        def ssgan():
            K.leaky_relu_dropout(x, p=0.0, scale=scale, shift=shift).backward(dy)
            clear()

        def stock():
            F.leaky_relu(x * scale.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1), 0.2).backward(dy)
            clear()
        def noop():
            _NoOp.apply(x, scale, shift).backward(dy)
            clear()

        ncs = x.detach().view(shape[0], shape[1], -1)
        seed = torch.zeros(1, dtype=torch.int64)
        args = (scale.detach(), shift.detach(), seed, 0.2, 0.0)

        def compiled_forward():
            _inductor.call(reference.leaky_relu_dropout_forward, ncs, *args)

        def compiled_backward():
            _inductor.call(reference.leaky_relu_dropout_backward, dy.view_as(ncs), ncs, *args,
                           True)
        print(f"{'x'.join(map(str, shape)):>12s}  ssgan {per_call_us(ssgan):6.1f}  "
              f"stock {per_call_us(stock):6.1f}  compiled forward {per_call_us(compiled_forward):6.1f}"
              f"  compiled backward {per_call_us(compiled_backward):6.1f}", end="")
        print(f"  no-op Function {per_call_us(noop):6.1f}" if x.numel() < 1024 else "")


if __name__ == "__main__":
    main()
