"""Times the improved recipe's Trainer.step (bundled MNIST) of the checkout on sys.path."""
import sys, time, torch
torch.set_num_threads(2)
from ssgan.train import Trainer, config_for
cfg = config_for("improved", progress=False, out_dir="/tmp/recipe_step_out")
tr = Trainer(cfg)
idx = torch.arange(cfg.batch_size)
for _ in range(5): tr.step(idx)
n = int(sys.argv[1]) if len(sys.argv) > 1 else 20
ts = []
for _ in range(n):
    s = time.perf_counter(); tr.step(idx); ts.append((time.perf_counter() - s) * 1e3)
ts.sort(); print(sys.argv[2] if len(sys.argv) > 2 else "", "median ms", round(ts[len(ts)//2], 1))
