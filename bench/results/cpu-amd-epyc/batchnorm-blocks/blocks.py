"""A model's whole BatchNorm block, forward+backward, at every BatchNorm shape of the batch-128
models, both layouts: ``models.LeakyBlock`` with its BatchNorm folded into the fused op (as it
ran on a CPU before, and runs on a GPU), the same block with ATen's batch norm first (a CPU's
way now), and stock's ``nn.BatchNorm2d`` + ``F.leaky_relu`` (+ ``F.dropout``), each block in
training mode, updating its running statistics. Interleaved rounds (``bench.common``),
medians, 2 threads.
Run from the repository root: PYTHONPATH=. python bench/results/cpu-amd-epyc/batchnorm-blocks/blocks.py
"""
import statistics

import torch
import torch.nn.functional as F
from torch import nn

import ssgan.models as models
from bench import common
from ssgan.cpu_memory import keep_freed_memory

keep_freed_memory()
torch.set_num_threads(2)
unfolded = models.folds_batch_norm

# (label, shape, dropout p): the BatchNorm blocks of D and G at batch 128
BLOCKS = [("D.act3", (128, 64, 4, 4), 0.5), ("D.act4/5", (128, 128, 4, 4), 0.0),
          ("G.act0", (128, 128, 4, 4), 0.0), ("G.act1", (128, 64, 8, 8), 0.0),
          ("G.act2", (128, 32, 16, 16), 0.0)]


def main() -> None:
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}; fwd+bwd medians, us")
    for label, shape, p in BLOCKS:
        for layout, name in ((torch.contiguous_format, "channels_first"),
                             (torch.channels_last, "channels_last")):
            if label == "D.act4/5" and layout == torch.contiguous_format:
                continue  # the same case as G.act0's
            block = models.LeakyBlock(shape[1], 0.2, p).to(memory_format=layout).train()
            bn = nn.BatchNorm2d(shape[1], eps=models.BN_EPS).to(memory_format=layout).train()
            x = torch.randn(shape).contiguous(memory_format=layout).requires_grad_()
            dy = torch.randn(shape).contiguous(memory_format=layout)

            def ours(fold: bool):
                def run():
                    models.folds_batch_norm = (lambda t: True) if fold else unfolded
                    block(x).backward(dy)
                return run

            fns = {"folded": ours(True), "ATen batch norm": ours(False),
                   "stock": lambda: F.dropout(F.leaky_relu(bn(x), 0.2), p).backward(dy)}
            leaves = [x, *block.parameters(), *bn.parameters()]
            times = common.interleaved_cpu_times_ms(fns, min_rounds=30, block_s=0.02,
                                                    grad_to_none={k: leaves for k in fns})
            us = {k: 1000 * statistics.median(v) for k, v in times.items()}
            print(f"{label:9s} {'x'.join(map(str, shape)):13s} p={p} {name:14s} "
                  + "  ".join(f"{k} {v:7.1f}" for k, v in us.items())
                  + f"  | folded/stock {us['folded'] / us['stock']:4.2f}"
                  f"  ATen-BN/stock {us['ATen batch norm'] / us['stock']:4.2f}")
    models.folds_batch_norm = unfolded


if __name__ == "__main__":
    main()
