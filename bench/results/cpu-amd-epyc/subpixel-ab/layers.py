"""The generator's three transposed convolutions alone, batch 128, channels-last, 2 threads:
ATen's forward against the sub-pixel forward, and forward+backward of the last layer through
ssgan.subpixel.deconv (sub-pixel forward, ATen backward) against the layer itself.

    PYTHONPATH=. python bench/results/cpu-amd-epyc/subpixel-ab/layers.py > .../layers.txt
"""
import statistics
import time

import torch
from torch import nn

from ssgan.subpixel import deconv, subpixel_conv_transpose

torch.set_num_threads(2)


def median_ms(fn, runs=30):
    for _ in range(5):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(1000 * (time.perf_counter() - start))
    return statistics.median(times)


cl = torch.channels_last
for c_in, c_out, size in ((128, 64, 4), (64, 32, 8), (32, 3, 16)):
    layer = nn.ConvTranspose2d(c_in, c_out, 5, 2, padding=2, output_padding=1).to(
        memory_format=cl)
    x = torch.randn(128, c_in, size, size).contiguous(memory_format=cl)
    with torch.no_grad():
        aten = median_ms(lambda: layer(x))
        ours = median_ms(lambda: subpixel_conv_transpose(x, layer.weight, layer.bias, 2, 2))
    print(f"{c_in}->{c_out} at {size}x{size}: forward ATen {aten:.2f} ms, sub-pixel {ours:.2f} ms")
layer = nn.ConvTranspose2d(32, 3, 5, 2, padding=2, output_padding=1).to(memory_format=cl)
x = torch.randn(128, 32, 16, 16).contiguous(memory_format=cl).requires_grad_()
dy = torch.randn(128, 3, 32, 32).contiguous(memory_format=cl)
params = [x, layer.weight, layer.bias]
aten = median_ms(lambda: torch.autograd.grad(layer(x), params, dy))
ours = median_ms(lambda: torch.autograd.grad(deconv(layer, x), params, dy))
print(f"32->3 forward+backward: ATen {aten:.2f} ms, deconv() {ours:.2f} ms")
print(f"torch {torch.__version__}, 2 threads, medians of 30 runs")
