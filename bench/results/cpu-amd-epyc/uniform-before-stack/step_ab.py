"""One training step (bench.train_step's ssgan variant: SVHN shapes, batch 128, 2 threads) with
the Philox-to-uniform step as shipped before and now (see ab.py), and the stock step between
them; one process, interleaved rounds, medians in ms.

    PYTHONPATH=.:bench/results/cpu-amd-epyc/uniform-before-stack \\
        python bench/results/cpu-amd-epyc/uniform-before-stack/step_ab.py
"""
import statistics
import time

import torch

import ssgan.kernels._inductor as compiled_path
from ssgan.kernels import reference as R
from bench.train_step import step_fn

from ab import before_uniform


def main():
    torch.set_num_threads(2)
    device = torch.device("cpu")
    now_uniform = R.dropout_uniform
    steps, uniforms = {}, {"before": before_uniform, "now": now_uniform}
    for name, uniform in uniforms.items():
        # each variant traces its own twins: a fresh table of compiled functions
        compiled_path._compiled = {}
        R.dropout_uniform = uniform
        steps[name] = step_fn("ssgan", 128, False, device)
        for _ in range(3):
            steps[name]()
        steps[name + "_table"] = compiled_path._compiled
    R.dropout_uniform = now_uniform
    steps["stock"] = step_fn("stock", 128, False, device)
    for _ in range(3):
        steps["stock"]()
    times = {name: [] for name in ("before", "now", "stock")}
    for _ in range(3):
        for _ in range(20):
            for name in times:
                if name != "stock":  # the compiled twins guard on the module global
                    compiled_path._compiled = steps[name + "_table"]
                    R.dropout_uniform = uniforms[name]
                t0 = time.perf_counter()
                steps[name]()
                times[name].append(1e3 * (time.perf_counter() - t0))
        print("  ".join(f"{n} {statistics.median(t[-20:]):.1f}" for n, t in times.items()),
              f"  stock/now {statistics.median(times['stock'][-20:]) / statistics.median(times['now'][-20:]):.3f}"
              f"  stock/before {statistics.median(times['stock'][-20:]) / statistics.median(times['before'][-20:]):.3f}")


if __name__ == "__main__":
    main()
