"""What changes on this machine when stock's folded-BN block slows down (rounds.csv): every 15 s,
the medians of 300 calls of stock's block and ssgan's (forward+backward at 128x128x4x4, the
benchmarks' allocator settings), a 1 MB copy and a 64K-element add (ATen splits both over the
threads), first on 2 threads, then on 1. Output: monitor.txt (times in us).
Run from the repository root: python bench/results/cpu-amd-epyc/folded-bn-variance/monitor.py"""
import statistics, time, torch
import torch.nn.functional as F
from ssgan.cpu_memory import keep_freed_memory
import ssgan.kernels as K
keep_freed_memory()
x = torch.randn(128,128,4,4, requires_grad=True)
s = (torch.rand(128)+.5).requires_grad_(); b = torch.randn(128, requires_grad=True)
dy = torch.randn(128,128,4,4)
src=torch.randn(2**18); dst=torch.empty_like(src)
small=torch.randn(65536); out=torch.empty_like(small)
def stock(): F.leaky_relu(x * s.view(1,-1,1,1) + b.view(1,-1,1,1), 0.2).backward(dy)
def ssgan(): K.leaky_relu_dropout(x, p=0.0, scale=s, shift=b).backward(dy)
def med(fn, n=300):
    ts=[]
    for i in range(n):
        x.grad=s.grad=b.grad=None
        t=time.perf_counter(); fn(); ts.append(time.perf_counter()-t)
    return statistics.median(ts)*1e6
print("utc | 2 threads: stock ssgan copy-1MB add-64K | 1 thread: stock ssgan copy-1MB add-64K")
for r in range(40):
    row=[time.strftime("%H:%M:%S", time.gmtime())]
    torch.set_num_threads(2)
    row += [med(stock), med(ssgan), med(lambda: dst.copy_(src)), med(lambda: torch.add(small, 1.0, out=out))]
    torch.set_num_threads(1)
    row += [med(stock), med(ssgan), med(lambda: dst.copy_(src)), med(lambda: torch.add(small, 1.0, out=out))]
    print(row[0], " ".join(f"{v:7.1f}" for v in row[1:]), flush=True)
    time.sleep(15)
