"""The generator's image out of its sub-pixel last layer, alone: ``pixel_shuffle`` of the
128x12x16x16 channels-last convolution output (which keeps the channels-last layout) then a
copy to channels-first, against the permuted copy ``ssgan.subpixel`` does, which writes the
channels-first image in one pass. Medians of 50 runs, 2 threads.

    PYTHONPATH=. python bench/results/cpu-amd-epyc/images-cf-ab/shuffle.py > .../shuffle.txt
"""
import statistics
import time

import torch
import torch.nn.functional as F

from ssgan.subpixel import _pixel_shuffle_channels_first

torch.set_num_threads(2)


def median_ms(fn, runs=50):
    for _ in range(5):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(1000 * (time.perf_counter() - start))
    return statistics.median(times)


y = torch.randn(128, 12, 16, 16).contiguous(memory_format=torch.channels_last)
shuffled = F.pixel_shuffle(y, 2)
assert torch.equal(_pixel_shuffle_channels_first(y, 2), shuffled)
print(f"pixel_shuffle: {median_ms(lambda: F.pixel_shuffle(y, 2)):.3f} ms "
      f"(output channels-last: {shuffled.is_contiguous(memory_format=torch.channels_last)})")
print(f"copy of its output to channels-first: {median_ms(lambda: shuffled.contiguous()):.3f} ms")
print(f"permuted copy: {median_ms(lambda: _pixel_shuffle_channels_first(y, 2)):.3f} ms")
print(f"torch {torch.__version__}, 2 threads")
