"""Minor page faults per forward+backward of the dropout block (no affine, p=0.5) at the sweep's
8 MB and 32 MB sizes, ssgan against stock, under the benchmarks' allocator settings: the 32 MB
rows of kernels.csv vary most between runs. Medians of 10 calls after 2, 2 threads.
Run: python bench/results/cpu-amd-epyc/sweep-page-faults/faults.py > faults.txt"""
import resource
import statistics
import time

import torch
import torch.nn.functional as F

import ssgan.kernels as K
from ssgan.cpu_memory import keep_freed_memory

keep_freed_memory()
torch.set_num_threads(2)


def minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


for n in (32, 128):
    x = torch.randn(n, 64, 32, 32, requires_grad=True)
    dy = torch.randn(n, 64, 32, 32)
    for name, fn in (("ssgan", lambda: K.leaky_relu_dropout(x, p=0.5).backward(dy)),
                     ("stock", lambda: F.dropout(F.leaky_relu(x, 0.2), 0.5).backward(dy))):
        fn()
        fn()
        before, times = minor_faults(), []
        for _ in range(10):
            x.grad = None
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        print(f"{n}x64x32x32 {name}: {statistics.median(times) * 1e3:.1f} ms, "
              f"{(minor_faults() - before) / 10:.0f} minor faults per call")
