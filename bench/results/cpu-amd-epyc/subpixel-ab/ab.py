"""A/B of the generator's sub-pixel last layer inside the training step, in one process:
the same ssgan trainer steps with ssgan.subpixel switched off (MAX_NARROW_CHANNELS = 0, every
transposed convolution is ATen's) and on (8), alternating, with the stock step between them.

    PYTHONPATH=. python bench/results/cpu-amd-epyc/subpixel-ab/ab.py > .../ab.txt
"""
import statistics
import time

import torch

import ssgan.subpixel as subpixel
from bench import train_step
from ssgan.cpu_memory import keep_freed_memory

torch.set_num_threads(2)
keep_freed_memory()
cpu = torch.device("cpu")
ssgan_step = train_step.step_fn("ssgan", 128, False, cpu)
stock_step = train_step.step_fn("stock", 128, False, cpu)
arms = {"subpixel off": (ssgan_step, 0), "subpixel on": (ssgan_step, 8), "stock": (stock_step, 8)}
for session in (1, 2):
    times = {name: [] for name in arms}
    for round_ in range(3 + 20):
        for name, (run, channels) in arms.items():
            subpixel.MAX_NARROW_CHANNELS = channels
            start = time.perf_counter()
            run()
            if round_ >= 3:
                times[name].append(1000 * (time.perf_counter() - start))
    print(f"session {session}: " + ", ".join(
        f"{name} {statistics.median(t):.1f} ms" for name, t in times.items()), flush=True)
print(f"torch {torch.__version__}, 2 threads, batch 128, 20 timed rounds after 3 warm-up")
