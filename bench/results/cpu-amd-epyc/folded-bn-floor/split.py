"""Where ssgan's time goes in a folded-BN block (affine + leaky ReLU, no dropout), forward +
backward at 128x128x4x4, both layouts: each variant strips one more layer off the default
path, all timed in the same interleaved rounds (``bench.common``), medians, 2 threads.
- ``op``: ``K.leaky_relu_dropout`` as the models call it;
- ``apply``: ``LeakyReLUDropoutFunction.apply`` with the seed tensor ready (no argument checks,
  no backend choice);
- ``graphs+Function``: a bare ``autograd.Function`` whose halves call the two compiled graphs
  directly (no lookup, no layout logic): what remains is autograd and the graphs;
- ``graphs``: the two compiled graphs alone, no autograd;
- ``backward graph``, ``backward graph, dx only``: the backward graph with and without the two
  per-channel sums;
- ``stock``: the benchmark's stock block.
Run from the repository root: PYTHONPATH=. python bench/results/cpu-amd-epyc/folded-bn-floor/split.py
"""
import importlib
import statistics

import torch
import torch.nn.functional as F

import ssgan.kernels as K
from bench import common
from ssgan.cpu_memory import keep_freed_memory
from ssgan.kernels import _inductor, reference

keep_freed_memory()
torch.set_num_threads(2)
LRD = importlib.import_module("ssgan.kernels.leaky_relu_dropout")
SHAPE = (128, 128, 4, 4)


def ncs(t):
    return t.view(t.shape[0], t.shape[1], -1)


def compiled(fn, *args):
    """The compiled graph ``_inductor.call`` would run for these arguments."""
    _inductor.call(fn, *args)
    key = tuple([fn] + [(a.dtype, a.device, a.shape, a.stride()) if isinstance(a, torch.Tensor)
                        else a for a in args])
    return _inductor._by_layout[key]


def main() -> None:
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"{'x'.join(map(str, SHAPE))}; medians, us")
    for layout, name in ((torch.contiguous_format, "channels_first"),
                         (torch.channels_last, "channels_last")):
        x = torch.randn(SHAPE).contiguous(memory_format=layout).requires_grad_()
        scale = (torch.rand(128) + 0.5).requires_grad_()
        shift = torch.randn(128, requires_grad=True)
        dy = torch.randn(SHAPE).contiguous(memory_format=layout)
        seed = torch.zeros(1, dtype=torch.int64)
        xd, sd, bd = x.detach(), scale.detach(), shift.detach()
        forward = compiled(reference.leaky_relu_dropout_forward, ncs(xd), sd, bd, seed, 0.2, 0.0)
        backward = compiled(reference.leaky_relu_dropout_backward, ncs(dy), ncs(xd), sd, bd,
                            seed, 0.2, 0.0, True)
        dx_only = compiled(reference.leaky_relu_dropout_backward, ncs(dy), ncs(xd), sd, bd,
                           seed, 0.2, 0.0, False)

        class Graphs(torch.autograd.Function):
            @staticmethod
            def forward(ctx, a, s, b):
                ctx.save_for_backward(a, s, b)
                return forward([ncs(a), s, b, seed])[0].view(a.shape)

            @staticmethod
            def backward(ctx, g):
                a, s, b = ctx.saved_tensors
                da, ds, db = backward([ncs(g), ncs(a), s, b, seed])
                return da.view(a.shape), ds, db

        view = (1, -1, 1, 1)
        fns = {
            "op": lambda: K.leaky_relu_dropout(x, p=0.0, scale=scale, shift=shift).backward(dy),
            "apply": lambda: LRD.LeakyReLUDropoutFunction.apply(
                x, scale, shift, seed, 0.2, 0.0, "inductor").backward(dy),
            "graphs+Function": lambda: Graphs.apply(x, scale, shift).backward(dy),
            "graphs": lambda: (forward([ncs(xd), sd, bd, seed]),
                               backward([ncs(dy), ncs(xd), sd, bd, seed])),
            "backward graph": lambda: backward([ncs(dy), ncs(xd), sd, bd, seed]),
            "backward graph, dx only": lambda: dx_only([ncs(dy), ncs(xd), sd, bd, seed]),
            "stock": lambda: F.leaky_relu(x * scale.view(view) + shift.view(view),
                                          0.2).backward(dy),
        }
        leaves = [x, scale, shift]
        times = common.interleaved_cpu_times_ms(fns, min_rounds=40, block_s=0.02,
                                                grad_to_none={k: leaves for k in fns})
        print(f"  {name:14s} " + "  ".join(f"{k} {1000 * statistics.median(v):6.1f}"
                                           for k, v in times.items()))


if __name__ == "__main__":
    main()
