"""A PROTOTYPE MEASUREMENT, NOT SHIPPED: the CPU training step (batch 128, 2 threads) with the
channels-last dropout blocks (fp32, no affine, p > 0: D.act1) routed to proto.py's C++ kernel
instead of the Inductor-compiled twins, alternating in one process with the step as shipped
and with the stock step. The patch reads the seed tensor on the host (a CPU tensor, no sync).

    OMP_NUM_THREADS=2 PYTHONPATH=. python bench/results/cpu-amd-epyc/cpp-dropout-prototype/step_ab.py
"""
import importlib.util
import statistics
import time
from pathlib import Path

import torch

from bench import train_step
from ssgan.cpu_memory import keep_freed_memory
from ssgan.kernels import _inductor, reference

spec = importlib.util.spec_from_file_location("proto", Path(__file__).with_name("proto.py"))
proto = importlib.util.module_from_spec(spec)
spec.loader.exec_module(proto)
torch.set_num_threads(2)
keep_freed_memory()
compiled_call = _inductor.call
routed = {"n": 0}


def channels_last_no_affine(x, scale, p) -> bool:
    return (x.dtype == torch.float32 and x.dim() == 3 and scale is None and p > 0
            and x.shape[2] % 4 == 0 and x.stride() == (x.shape[1] * x.shape[2], 1, x.shape[1]))


def with_prototype(fn, *args):
    if fn is reference.leaky_relu_dropout_forward:
        x, scale, shift, seed, slope, p = args
        if channels_last_no_affine(x, scale, p):
            routed["n"] += 1
            return proto.mod.fwd(x, int(seed.item()), slope, p)
    if fn is reference.leaky_relu_dropout_backward:
        dy, x, scale, shift, seed, slope, p, affine_grads = args
        if channels_last_no_affine(x, scale, p) and dy.stride() == x.stride():
            routed["n"] += 1
            return proto.mod.bwd(dy, x, int(seed.item()), slope, p), x.new_empty(0), \
                x.new_empty(0)
    return compiled_call(fn, *args)


cpu = torch.device("cpu")
ssgan_step = train_step.step_fn("ssgan", 128, False, cpu)
stock_step = train_step.step_fn("stock", 128, False, cpu)
arms = {"shipped (Inductor)": (ssgan_step, compiled_call),
        "C++ prototype for D.act1": (ssgan_step, with_prototype), "stock": (stock_step, None)}
for session in (1, 2, 3):
    times = {name: [] for name in arms}
    for round_ in range(3 + 25):
        for name, (run, call) in arms.items():
            if call is not None:
                _inductor.call = call
            start = time.perf_counter()
            run()
            if round_ >= 3:
                times[name].append(1000 * (time.perf_counter() - start))
    print(f"session {session}: " + ", ".join(
        f"{name} {statistics.median(t):.1f} ms" for name, t in times.items()), flush=True)
print(f"calls routed to the prototype per step: {routed['n'] / (3 * 28):.0f}")
print(f"torch {torch.__version__}, 2 threads, batch 128, 25 timed rounds after 3 warm-up")
