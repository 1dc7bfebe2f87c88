"""The ssgan training step (batch 128, SVHN shapes, 2 threads) with the models' BatchNorm folded
into the fused op, as before, against ATen's batch norm first (``models.folds_batch_norm``
False on a CPU, now the default), and stock's step for scale: two trainers built alike, timed
in interleaved rounds of one step each (``bench.common``), medians over 60 rounds; the switch
is set before every step of its trainer.
Run from the repository root: PYTHONPATH=. python bench/results/cpu-amd-epyc/batchnorm-blocks/step_ab.py
"""
import statistics

import torch

import ssgan.models as models
from bench import common
from bench.train_step import step_fn
from ssgan.cpu_memory import keep_freed_memory

keep_freed_memory()
torch.set_num_threads(2)
device = torch.device("cpu")
unfolded = models.folds_batch_norm


def with_folding(fold: bool, step):
    def run():
        models.folds_batch_norm = (lambda x: True) if fold else unfolded
        step()
    return run


fns = {"folded (before)": with_folding(True, step_fn("ssgan", 128, False, device)),
       "ATen batch norm (now)": with_folding(False, step_fn("ssgan", 128, False, device)),
       "stock": step_fn("stock", 128, False, device)}
times = common.interleaved_cpu_times_ms(fns, min_rounds=60)
print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, batch 128; "
      "medians of 60 interleaved rounds, ms per step")
for name, t in times.items():
    q = statistics.quantiles(t, n=4)
    print(f"  {name:24s} {statistics.median(t):6.1f}  (quartiles {q[0]:.1f}-{q[2]:.1f})")
