"""Where a training step's host time goes: torch.profiler over a few steps of one
``bench.train_step`` variant, the top ops by self CPU time (and by device time on a GPU). On a
CPU, ``--onednn`` also sums oneDNN's own timing of every convolution and matmul it runs
(``ONEDNN_VERBOSE``) by primitive and propagation, beside the step's time without it: the
share of a step that is oneDNN's kernels, and which of them cost most.

On the lent H100 the eager ssgan step was slower than stock's, and a fused op's
forward+backward took about the same time whatever its size: host time, not kernel time
(docs/gpu.md). This is the first thing to run the next time a GPU is lent
(``bash bench/gpu_session.sh profile``).

    python -m bench.host_profile --device cuda --variants ssgan stock --out DIR
    python -m bench.host_profile --device cpu --threads 2 --recipe improved \
        --variants ssgan+bf16 --onednn --steps 20 --out DIR
"""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import statistics
import sys
import tempfile
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from bench import common
from bench.train_step import VARIANTS, step_fn


def profile_variant(run: Callable[[], object], title: str, device: torch.device,
                    steps: int) -> str:
    """The profiler's table for ``steps`` calls of ``run`` (a warmed-up step)."""
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
    return f"# {title}\n\n" + "\n".join(tables)


@contextlib.contextmanager
def _stdout_into(file) -> Iterator[None]:
    """Points the process's stdout (file descriptor 1, where oneDNN's C code prints) at
    ``file`` within the block."""
    libc = ctypes.CDLL(None)
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(file.fileno(), 1)
    try:
        yield
    finally:
        libc.fflush(None)  # C stdio buffers what it prints into a file
        os.dup2(saved, 1)
        os.close(saved)


def onednn_rows(run: Callable[[], object], steps: int) -> list[dict]:
    """oneDNN's own timing of every primitive it executes in ``steps`` calls of ``run``, per
    call of ``run``: one row per (primitive, propagation, implementation, problem) with its
    calls and milliseconds, most time first."""
    with tempfile.TemporaryFile(mode="w+") as log:
        with _stdout_into(log), torch.backends.mkldnn.verbose(
                torch.backends.mkldnn.VERBOSE_ON):
            for _ in range(steps):
                run()
        log.seek(0)
        lines = log.read().splitlines()
    totals: dict[tuple, list] = defaultdict(lambda: [0, 0.0])
    for line in lines:
        fields = line.split(",")
        if not line.startswith("onednn_verbose,") or "exec" not in fields[:5]:
            continue
        at = fields.index("exec")  # then: engine, primitive, implementation, propagation
        key = (fields[at + 2], fields[at + 4], fields[at + 3], fields[-2])
        totals[key][0] += 1
        totals[key][1] += float(fields[-1])
    rows = [{"primitive": k[0], "propagation": k[1], "implementation": k[2], "problem": k[3],
             "calls_per_step": n / steps, "ms_per_step": ms / steps}
            for k, (n, ms) in totals.items()]
    return sorted(rows, key=lambda r: -r["ms_per_step"])


def onednn_summary(rows: list[dict], ms: float, title: str) -> str:
    """Markdown: oneDNN's share of a step of ``ms`` milliseconds, by primitive and
    propagation."""
    kinds: dict[tuple, list] = defaultdict(lambda: [0.0, 0.0])
    for row in rows:
        kinds[row["primitive"], row["propagation"]][0] += row["calls_per_step"]
        kinds[row["primitive"], row["propagation"]][1] += row["ms_per_step"]
    total = sum(row["ms_per_step"] for row in rows)
    table = common.markdown_table(
        [{"primitive": k[0], "propagation": k[1], "calls": calls, "ms": t, "share": t / ms}
         for k, (calls, t) in sorted(kinds.items(), key=lambda kv: -kv[1][1])],
        {"primitive": "primitive", "propagation": "propagation", "calls": "calls/step",
         "ms": "ms/step", "share": "of the step"})
    return (f"# {title}\n\nA step takes {ms:.3g} ms (median, without verbose mode); oneDNN's "
            f"primitives report {total:.3g} ms of it ({total / ms:.0%}).\n\n{table}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.host_profile", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads (default: torch's default, one per core)")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=["ssgan", "stock"])
    parser.add_argument("--recipe", choices=("notebook", "improved"), default="notebook",
                        help="whose step (as bench.train_step's --recipe; default: notebook)")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--smoke", action="store_true",
                        help="a tiny model, to check the harness; timings are not results")
    parser.add_argument("--onednn", action="store_true",
                        help="CPU: also <variant>_onednn.csv/.md, oneDNN's own timing of its "
                        "primitives (ONEDNN_VERBOSE) beside the step's time")
    parser.add_argument("--out", required=True, help="folder for one <variant>.txt each")
    args = parser.parse_args(argv)
    if args.onednn and args.device != "cpu":
        raise SystemExit("python -m bench.host_profile: --onednn times oneDNN's CPU "
                         "primitives; use it with --device cpu")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("python -m bench.host_profile: --device cuda, but no CUDA GPU is "
                         "visible; use --device cpu")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    env = common.environment(device, smoke=args.smoke)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for variant in args.variants:
        run = step_fn(variant, args.batch, args.smoke, device, args.recipe)
        for _ in range(3):  # warm-up: compilation, allocator, oneDNN's primitive cache
            run()
        title = f"{variant}, {args.recipe} step, batch {args.batch}, {args.steps} steps on {device}"
        name = variant.replace("+", "_")
        paths = [out / f"{name}.txt"]
        paths[0].write_text(profile_variant(run, title, device, args.steps))
        if args.onednn:
            # the step's own time, without oneDNN's verbose mode
            ms = statistics.median(common.cpu_times_ms(run, args.steps, 0.0))
            rows = [{**row, "step_ms": ms, **env} for row in onednn_rows(run, args.steps)]
            common.write_csv(rows, out / f"{name}_onednn.csv")
            paths.append(out / f"{name}_onednn.md")
            paths[-1].write_text(onednn_summary(rows, ms, title))
        for path in paths:
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
