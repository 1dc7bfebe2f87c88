"""A/B of this session's two CPU step changes, in one process, alternating: the same ssgan
trainer steps with the code's earlier behaviour restored by monkeypatching, then as it is now,
with the stock step between them.

- "before": real batches converted to channels-last, the generator's image channels-last (as
  ``pixel_shuffle`` left it), and bare leaky-ReLU blocks (D.act2, D.act7) through the fused op;
- "images channels-first": only the bare leaky-ReLU blocks restored;
- "now": the code as committed.

    PYTHONPATH=. python bench/results/cpu-amd-epyc/images-cf-ab/ab.py > .../ab.txt
"""
import statistics
import time

import torch

import ssgan.kernels as K
from bench import train_step
from ssgan import models, train
from ssgan.cpu_memory import keep_freed_memory

torch.set_num_threads(2)
keep_freed_memory()
cl = torch.channels_last
current = (train.Trainer._real_images, models.Generator.forward, models.LeakyBlock.forward)


def images_channels_last(before_real, before_gen):
    def real(self, idx):
        return before_real(self, idx).contiguous(memory_format=cl)

    def generate(self, z):
        return before_gen(self, z).contiguous(memory_format=cl)
    return real, generate


def always_fused(self, x, update_stats=True):
    scale = shift = None
    if self.bn is not None:
        scale, shift = self.bn.scale_shift(x, update_stats)
    return K.leaky_relu_dropout(x, negative_slope=self.alpha, p=self.p,
                                training=self.training, scale=scale, shift=shift)


arms = {"before": (*images_channels_last(*current[:2]), always_fused),
        "images channels-first": (*current[:2], always_fused),
        "now": current, "stock": current}
cpu = torch.device("cpu")
ssgan_step = train_step.step_fn("ssgan", 128, False, cpu)
stock_step = train_step.step_fn("stock", 128, False, cpu)
for session in (1, 2, 3):
    times = {name: [] for name in arms}
    for round_ in range(3 + 25):
        for name, patch in arms.items():
            train.Trainer._real_images, models.Generator.forward, models.LeakyBlock.forward = patch
            run = stock_step if name == "stock" else ssgan_step
            start = time.perf_counter()
            run()
            if round_ >= 3:
                times[name].append(1000 * (time.perf_counter() - start))
    print(f"session {session}: " + ", ".join(
        f"{name} {statistics.median(t):.1f} ms" for name, t in times.items()), flush=True)
print(f"torch {torch.__version__}, 2 threads, batch 128, 25 timed rounds after 3 warm-up")
