"""Where a training step's host time goes: torch.profiler over a few steps of one
``bench.train_step`` variant, the top ops by self CPU time (and by device time on a GPU).

On the lent H100 the eager ssgan step was slower than stock's, and a fused op's
forward+backward took about the same time whatever its size: host time, not kernel time
(docs/gpu.md). This is the first thing to run the next time a GPU is lent
(``bash bench/gpu_session.sh profile``).

    python -m bench.host_profile --device cuda --variants ssgan stock --out DIR
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from bench.train_step import VARIANTS, step_fn


def profile_variant(variant: str, device: torch.device, batch: int, steps: int) -> str:
    """The profiler's table for ``steps`` steps of ``variant`` after three warm-up steps."""
    run = step_fn(variant, batch, False, device)
    for _ in range(3):
        run()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda"
                                           else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            run()
        if device.type == "cuda":
            torch.cuda.synchronize()
    averages = prof.key_averages()
    tables = [averages.table(sort_by="self_cpu_time_total", row_limit=40)]
    if device.type == "cuda":
        tables.append(averages.table(sort_by="self_cuda_time_total", row_limit=25))
    return f"# {variant}, batch {batch}, {steps} steps on {device}\n\n" + "\n".join(tables)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.host_profile", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=["ssgan", "stock"])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--out", required=True, help="folder for one <variant>.txt each")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("python -m bench.host_profile: --device cuda, but no CUDA GPU is "
                         "visible; use --device cpu")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for variant in args.variants:
        text = profile_variant(variant, torch.device(args.device), args.batch, args.steps)
        path = out / f"{variant.replace('+', '_')}.txt"
        path.write_text(text)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
