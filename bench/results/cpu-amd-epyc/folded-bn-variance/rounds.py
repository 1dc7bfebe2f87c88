"""How much the folded-BN block's stock baseline moves over time on this machine: every
``--pause`` seconds, ssgan's block and stock's (forward+backward, bench.kernels' own cases and
timing: a median over about 1 s each, under the benchmarks' allocator settings) at the
128x128x4x4 and 128x64x8x8 shapes the models use, in alternating order. Writes rounds.csv.
Run from the repository root: python bench/results/cpu-amd-epyc/folded-bn-variance/rounds.py"""
import argparse
import csv
import time
from pathlib import Path

import torch

from bench import common
from bench import kernels as bk
from ssgan.cpu_memory import keep_freed_memory


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--pause", type=float, default=20.0)
    args = parser.parse_args()
    keep_freed_memory()
    torch.set_num_threads(2)
    device = torch.device("cpu")
    cases = [c for c in bk.cases(torch.float32, device, False, "inductor")
             if c.label in ("D.act4", "G.act1")]
    out = Path(__file__).with_name("rounds.csv")
    with out.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["round", "utc", "shape_from", "shape", "ssgan_ms", "stock_ms",
                         "vs_stock"])
        for r in range(args.rounds):
            for case in cases:
                order = ("ssgan", "stock") if r % 2 == 0 else ("stock", "ssgan")
                ms = {p: bk.measure(case, p, "fwd+bwd", False, float("nan"), device)["median_ms"]
                      for p in order}
                row = [r, time.strftime("%H:%M:%S", time.gmtime()), case.label,
                       "x".join(map(str, case.shape)), f"{ms['ssgan']:.4f}",
                       f"{ms['stock']:.4f}", f"{ms['stock'] / ms['ssgan']:.2f}"]
                writer.writerow(row)
                f.flush()
                print(*row, flush=True)
            time.sleep(args.pause)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"{common.cpu_name()}; wrote {out}")


if __name__ == "__main__":
    main()
