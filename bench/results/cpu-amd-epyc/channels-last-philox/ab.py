"""The compiled CPU dropout block (leaky ReLU + dropout 0.5, no affine: D.act1) on a
channels-last 128x64x16x16 input, with its Philox numbers drawn in row-major order (as before
this change) and in the channels-last order (``_philox.dropout_uniform_channels_last``), and on
a channels-first input for scale. The masks are bit-identical (checked here, and by the tests).
Forward and backward halves through ``_inductor.call``, as the op's halves call them, timed in
interleaved rounds (``bench.common``), medians, 2 threads.
Run from the repository root: PYTHONPATH=. python bench/results/cpu-amd-epyc/channels-last-philox/ab.py
"""
import statistics

import torch

from bench import common
from ssgan.cpu_memory import keep_freed_memory
from ssgan.kernels import _inductor, reference as ref

keep_freed_memory()
torch.set_num_threads(2)
P, SLOPE = 0.5, 0.2


def keep(t, seed, channels_last_draw):
    return ref.dropout_keep_mask(seed, t.shape, P, t.device, channels_last=channels_last_draw)


def forward(x, seed, channels_last_draw):
    t = torch.where(x > 0, x, x * SLOPE)
    y = torch.where(keep(t, seed, channels_last_draw), t * (1 / (1 - P)), 0.0)
    return torch.empty_like(x).copy_(y)


def backward(dy, x, seed, channels_last_draw):
    dz = torch.where(x > 0, dy, dy * SLOPE)
    dx = torch.where(keep(x, seed, channels_last_draw), dz * (1 / (1 - P)), 0.0)
    return torch.empty_like(x).copy_(dx)


def main() -> None:
    n, c, s = 128, 64, 256
    cl = torch.randn(n, s, c).permute(0, 2, 1)         # (N, C, S) view, channels-last memory
    dy_cl = torch.randn(n, s, c).permute(0, 2, 1)
    cf, dy_cf = cl.contiguous(), dy_cl.contiguous()
    seed = torch.tensor([123456789], dtype=torch.int64)
    cases = {"channels-last, row-major draw": (cl, dy_cl, False),
             "channels-last, channels-last draw": (cl, dy_cl, True),
             "channels-first": (cf, dy_cf, False)}
    outputs = {k: _inductor.call(forward, x, seed, flag) for k, (x, _, flag) in cases.items()}
    grads = {k: _inductor.call(backward, d, x, seed, flag) for k, (x, d, flag) in cases.items()}
    assert all(torch.equal(v, outputs["channels-first"]) for v in outputs.values())
    assert all(torch.equal(v, grads["channels-first"]) for v in grads.values())
    fns = {}
    for k, (x, d, flag) in cases.items():
        fns[f"fwd {k}"] = lambda x=x, flag=flag: _inductor.call(forward, x, seed, flag)
        fns[f"bwd {k}"] = lambda x=x, d=d, flag=flag: _inductor.call(backward, d, x, seed, flag)
    times = common.interleaved_cpu_times_ms(fns, min_rounds=20, block_s=0.05)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, 128x64x16x16, "
          "masks bit-identical; medians, ms")
    for name, t in times.items():
        print(f"  {name:40s} {statistics.median(t):6.3f}  ({len(t)} calls)")


if __name__ == "__main__":
    main()
