"""What both benchmarks share: the environment record, timing, bandwidth and output files."""
from __future__ import annotations

import csv
import platform
import re
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import triton

NOT_A_MEASUREMENT = "CPU smoke run of the harness: timings are not results; GPU numbers need a GPU"


def environment(smoke: bool) -> dict:
    """Device name, versions and the command line, stamped on every CSV row."""
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    return {"gpu": gpu, "torch": torch.__version__, "triton": triton.__version__,
            "python": platform.python_version(),
            "command": " ".join(shlex.quote(a) for a in [Path(sys.argv[0]).name, *sys.argv[1:]]),
            "note": NOT_A_MEASUREMENT if smoke else ""}


def results_dir(out: str | None, env: dict) -> Path:
    name = "cpu-smoke" if env["note"] else re.sub(r"[^A-Za-z0-9]+", "-", env["gpu"]).strip("-")
    path = Path(out) if out else Path("bench") / "results" / name.lower()
    path.mkdir(parents=True, exist_ok=True)
    return path


def require_gpu_or_smoke(smoke: bool, prog: str) -> None:
    if not smoke and not torch.cuda.is_available():
        raise SystemExit(f"{prog}: no CUDA GPU is visible, and GPU numbers need one. Run it on a "
                         "GPU machine, or pass --smoke to exercise the harness on CPU (its "
                         "timings are then marked as not a measurement).")
    if smoke:
        print(f"{prog}: {NOT_A_MEASUREMENT}")


def setup(args) -> tuple[torch.device, dict, Path]:
    """Shared start of both benchmarks: refuse CPU timings unless --smoke, then pick the
    device, stamp the environment and create the output folder."""
    require_gpu_or_smoke(args.smoke, args.prog)
    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    env = environment(args.smoke)
    return device, env, results_dir(args.out, env)


def add_common_args(parser) -> None:
    parser.add_argument("--smoke", action="store_true",
                        help="tiny shapes on CPU to check the harness; timings are not results")
    parser.add_argument("--out", default=None,
                        help="output folder (default: bench/results/<gpu>)")
    parser.set_defaults(prog=parser.prog)


def bench_ms(fn: Callable[[], object], smoke: bool, grad_to_none=None) -> float:
    """Median milliseconds: ``triton.testing.do_bench`` on a GPU (warm-up, L2 flushed between
    runs); on a CPU smoke run, a few perf_counter repetitions that only prove the code runs."""
    if not smoke:
        return triton.testing.do_bench(fn, warmup=25, rep=100, grad_to_none=grad_to_none,
                                       return_mode="median")
    fn()
    times = []
    for _ in range(2):
        if grad_to_none:
            for t in grad_to_none:
                t.grad = None
        start = time.perf_counter()
        fn()
        times.append(1000 * (time.perf_counter() - start))
    return statistics.median(times)


def copy_bandwidth_gbps(smoke: bool, megabytes: int = 1024) -> float:
    """The device's measured copy bandwidth (read + write bytes per second), the 100% line."""
    if smoke:
        return float("nan")
    src = torch.empty(megabytes * 2**20 // 4, dtype=torch.float32, device="cuda")
    dst = torch.empty_like(src)
    ms = triton.testing.do_bench(lambda: dst.copy_(src), return_mode="median")
    return 2 * src.numel() * 4 / ms / 1e6


def peak_memory_mb(fn: Callable[[], object], device: torch.device) -> float:
    """Peak memory that one call allocates beyond what was live before it."""
    if device.type != "cuda":
        return float("nan")
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def write_csv(rows: list[dict], path: Path) -> Path:
    fields = list(dict.fromkeys(k for row in rows for k in row))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {path} ({len(rows)} rows)")
    return path
