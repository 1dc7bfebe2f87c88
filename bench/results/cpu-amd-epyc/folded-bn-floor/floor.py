"""How fast can a folded-BN block (per-channel affine + leaky ReLU, no dropout) go on this CPU
through a Python ``autograd.Function``? A lower bound assembled from measured pieces, set
against a third of stock's time (issue 7 asks for 3x stock eager), at the models' 128x128x4x4
(D.act4, D.act5, G.act0), in both layouts.

Pieces, each the least any implementation of the op's half must pay (a model, not a
measurement of any real implementation):
- forward: ATen's ``copy_`` of x into a preallocated tensor (read x, write y: the forward's
  memory traffic, with no arithmetic);
- backward: ATen's ``torch.add(x, dy, out=dx)`` (read x and dy, write dx), leaving out the two
  per-channel sums the real backward also makes;
- autograd: a no-op ``autograd.Function`` saving three tensors, forward+backward, at 2x128x1x1
  where it moves no data (at 128x128x4x4 AccumulateGrad would copy the returned gradient).
Every variant is timed in the same interleaved rounds (``bench.common``), medians over 40 runs
of a 20 ms block each, 2 threads, with the benchmarks' allocator settings.
Run from the repository root: PYTHONPATH=. python bench/results/cpu-amd-epyc/folded-bn-floor/floor.py
"""
import statistics

import torch
import torch.nn.functional as F

import ssgan.kernels as K
from bench import common
from ssgan.cpu_memory import keep_freed_memory

keep_freed_memory()
torch.set_num_threads(2)


class _NoOp(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, scale, shift):
        ctx.save_for_backward(x, scale, shift)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, dy):
        return dy, None, None


def leaves(shape, layout):
    x = torch.randn(shape).contiguous(memory_format=layout).requires_grad_()
    scale = (torch.rand(shape[1]) + 0.5).requires_grad_()
    shift = torch.randn(shape[1], requires_grad=True)
    return x, scale, shift, torch.randn(shape).contiguous(memory_format=layout)


def fwd_bwd(fn, x, scale, shift, dy):
    def run():
        fn(x, scale, shift).backward(dy)
    return run, [x, scale, shift]


def main() -> None:
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}; medians, us")
    tiny = leaves((2, 128, 1, 1), torch.contiguous_format)
    for layout, name in ((torch.contiguous_format, "channels_first"),
                         (torch.channels_last, "channels_last")):
        x, scale, shift, dy = leaves((128, 128, 4, 4), layout)
        y, dx = torch.empty_like(dy), torch.empty_like(dy)
        xd = x.detach()
        view = (1, -1, 1, 1)
        runs = {
            "stock": fwd_bwd(lambda a, s, b: F.leaky_relu(a * s.view(view) + b.view(view), 0.2),
                             x, scale, shift, dy),
            "ssgan": fwd_bwd(lambda a, s, b: K.leaky_relu_dropout(a, p=0.0, scale=s, shift=b),
                             x, scale, shift, dy),
            "copy_": (lambda: y.copy_(xd), []),
            "add": (lambda: torch.add(xd, dy, out=dx), []),
            "no-op Function": fwd_bwd(_NoOp.apply, *tiny),
        }
        times = common.interleaved_cpu_times_ms(
            {k: run for k, (run, _) in runs.items()}, min_rounds=40, block_s=0.02,
            grad_to_none={k: grads for k, (_, grads) in runs.items()})
        us = {k: 1000 * statistics.median(v) for k, v in times.items()}
        floor = us["copy_"] + us["add"] + us["no-op Function"]
        print(f"128x128x4x4 {name:14s} " + "  ".join(f"{k} {v:6.1f}" for k, v in us.items())
              + f"  | floor {floor:5.1f}  stock/3 {us['stock'] / 3:5.1f}"
              f"  ssgan vs stock {us['stock'] / us['ssgan']:4.2f}x")


if __name__ == "__main__":
    main()
