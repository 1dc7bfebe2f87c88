"""Does the fixed order of bench.train_step's interleaved rounds (ssgan right after the
reference) favour or hurt a variant? The five variants timed in one process, 30 rounds each,
in the fixed order and in an order rotated by one each round, twice each.

    PYTHONPATH=. python bench/results/cpu-amd-epyc/images-cf-ab/order.py > .../order.txt
"""
import collections
import statistics
import time

import torch

from bench import train_step
from ssgan.cpu_memory import keep_freed_memory

torch.set_num_threads(2)
keep_freed_memory()
variants = ["ssgan", "stock", "stock+compile", "stock+channels_last", "reference"]
prepared = [train_step.prepare(v, 128, False, torch.device("cpu")) for v in variants]
for p in prepared:
    p["run"]()
for mode in ("fixed", "rotated", "fixed", "rotated"):
    times = collections.defaultdict(list)
    for round_ in range(2 + 30):
        shift = 0 if mode == "fixed" else round_ % len(prepared)
        for p in prepared[shift:] + prepared[:shift]:
            start = time.perf_counter()
            p["run"]()
            if round_ >= 2:
                times[p["variant"]].append(1000 * (time.perf_counter() - start))
    m = {v: statistics.median(t) for v, t in times.items()}
    print(f"{mode:8s} ssgan {m['ssgan']:.1f} stock {m['stock']:.1f} "
          f"ratio {m['stock'] / m['ssgan']:.3f}  compile {m['stock+compile']:.1f} "
          f"ref {m['reference']:.1f}", flush=True)
