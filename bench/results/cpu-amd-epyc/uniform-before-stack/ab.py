"""The compiled dropout block (leaky ReLU + dropout 0.5, fp32, 128x64x16x16 channels-last: the
model's D.act1) with the Philox-to-uniform step as shipped before and as shipped now,
alternating in one process, 2 threads, 100 rounds; medians in ms.

before: the four int64 words stacked, then each mapped to [0, 1) with two int64 torch.where
        (wrong under Inductor's AVX2 code: see isa.py);
now:    ssgan.kernels._philox.dropout_uniform: each word mapped through int32 with shifts and
        xor, then the four floats stacked.

    PYTHONPATH=. python bench/results/cpu-amd-epyc/uniform-before-stack/ab.py
"""
import statistics
import time
import types

import torch

from ssgan.kernels import _philox as P, reference as R

torch.set_num_threads(2)


def before_uniform(seed, numel, device):
    counters = torch.arange((numel + 3) // 4, device=device)
    words = torch.stack(P.philox4x(seed, counters), dim=-1).reshape(-1)[:numel]
    signed = torch.where(words >= 2**31, words - 2**32, words)
    signed = torch.where(signed < 0, -signed - 1, signed)
    return signed.to(torch.float32) * P._INT_TO_UNIT


def with_uniform(fn, uniform):
    """``fn`` (a twin) compiled with ``dropout_uniform`` replaced along its call chain."""
    def rebind(f, **names):
        return types.FunctionType(f.__code__.replace(), {**f.__globals__, **names}, f.__name__,
                                  f.__defaults__)
    keep = rebind(R.dropout_keep_mask, dropout_uniform=uniform)
    drop = rebind(R._dropout, dropout_keep_mask=keep)
    return torch.compile(rebind(fn, _dropout=drop), dynamic=True)


def main():
    x = torch.randn(128, 256, 64).transpose(1, 2)  # (N, C, S) viewed from channels-last
    dy = torch.randn(128, 256, 64).transpose(1, 2)
    seed = torch.tensor([99])
    variants = {name: (with_uniform(R.leaky_relu_dropout_forward, u),
                       with_uniform(R.leaky_relu_dropout_backward, u))
                for name, u in (("before", before_uniform), ("now", P.dropout_uniform))}
    times = {name: ([], []) for name in variants}
    with torch.no_grad():
        outs = [(f(x, None, None, seed, 0.2, 0.5), b(dy, x, None, None, seed, 0.2, 0.5, False)[0])
                for f, b in variants.values()]
        assert all(torch.equal(a, c) for a, c in zip(*outs)), "the variants disagree"
        for _ in range(100):
            for name, (f, b) in variants.items():
                t0 = time.perf_counter()
                f(x, None, None, seed, 0.2, 0.5)
                t1 = time.perf_counter()
                b(dy, x, None, None, seed, 0.2, 0.5, False)
                t2 = time.perf_counter()
                times[name][0].append(1e3 * (t1 - t0))
                times[name][1].append(1e3 * (t2 - t1))
    for name, (fwd, bwd) in times.items():
        print(f"{name:7s} fwd {statistics.median(fwd):.3f} ms   bwd {statistics.median(bwd):.3f} ms")


if __name__ == "__main__":
    main()
