"""What both benchmarks share: device choice, the environment record, timing, bandwidth,
peak memory and output files.

On a GPU, times are ``triton.testing.do_bench`` medians (L2 flushed). On a CPU they are medians
of repeated ``perf_counter`` runs after warm-up, on the stated number of threads, with the
variants compared in one table timed in interleaved rounds; peak memory comes from the
profiler's allocation events. ``--smoke`` runs tiny shapes to check the harness; its rows say
they are not a measurement.
"""
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

from ssgan.cpu_memory import keep_freed_memory

NOT_A_MEASUREMENT = "smoke run of the harness: timings are not results"


def add_common_args(parser) -> None:
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="where to measure (default: the GPU if one is visible, else CPU)")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads (default: torch's default, one per core)")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny shapes on CPU to check the harness; timings are not results")
    parser.add_argument("--out", default=None,
                        help="output folder (default: bench/results/<gpu> or cpu-<cpu>)")
    parser.set_defaults(prog=parser.prog)


def setup(args) -> tuple[torch.device, dict, Path]:
    """Shared start of both benchmarks: pick the device and threads, stamp the environment and
    create the output folder."""
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"{args.prog}: --device cuda, but no CUDA GPU is visible; use "
                         "--device cpu")
    use_cuda = not args.smoke and args.device != "cpu" and torch.cuda.is_available()
    device = torch.device("cuda" if use_cuda else "cpu")
    if args.threads:
        torch.set_num_threads(args.threads)
    env = environment(device, args.smoke)
    # process-wide, so every variant, stock included, runs under the allocator settings that
    # ssgan's trainer uses on a CPU
    env["freed_memory_kept"] = keep_freed_memory() if device.type == "cpu" else ""
    if args.smoke:
        print(f"{args.prog}: {NOT_A_MEASUREMENT}")
    return device, env, results_dir(args.out, env)


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() \
            else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def environment(device: torch.device, smoke: bool) -> dict:
    """Device name, threads, versions and the command line, stamped on every CSV row."""
    name = torch.cuda.get_device_name() if device.type == "cuda" else cpu_name()
    return {"device": name, "device_type": device.type,
            "threads": torch.get_num_threads() if device.type == "cpu" else "",
            "torch": torch.__version__, "triton": triton.__version__,
            "python": platform.python_version(),
            "command": " ".join(shlex.quote(a) for a in [Path(sys.argv[0]).name, *sys.argv[1:]]),
            "note": NOT_A_MEASUREMENT if smoke else ""}


def results_dir(out: str | None, env: dict) -> Path:
    slug = re.sub(r"[^A-Za-z0-9]+", "-", env["device"]).strip("-").lower()
    name = "smoke" if env["note"] else (f"cpu-{slug}" if env["device_type"] == "cpu" else slug)
    path = Path(out) if out else Path("bench") / "results" / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def bench_ms(fn: Callable[[], object], device: torch.device, smoke: bool,
             grad_to_none=None, budget_s: float = 1.0, gpu_rep_ms: int = 100) -> float:
    """Median milliseconds of ``fn``: ``do_bench`` on a GPU (``gpu_rep_ms`` of repetitions
    after a quarter of that in warm-up); on a CPU, after two warm-up calls, at least 10 runs and
    as many more as fit in ``budget_s`` (2 runs for --smoke)."""
    if device.type == "cuda" and not smoke:
        return triton.testing.do_bench(fn, warmup=max(25, gpu_rep_ms // 4), rep=gpu_rep_ms,
                                       grad_to_none=grad_to_none, return_mode="median")
    return statistics.median(cpu_times_ms(fn, 2 if smoke else 10, 0.0 if smoke else budget_s,
                                          grad_to_none))


def cpu_times_ms(fn: Callable[[], object], min_runs: int, budget_s: float,
                 grad_to_none=None) -> list[float]:
    for _ in range(2):
        fn()
    times: list[float] = []
    deadline = time.perf_counter() + budget_s
    while len(times) < min_runs or (time.perf_counter() < deadline and len(times) < 1000):
        for t in grad_to_none or ():
            t.grad = None
        start = time.perf_counter()
        fn()
        times.append(1000 * (time.perf_counter() - start))
    return times


def interleaved_cpu_times_ms(fns: dict[str, Callable[[], object]], min_rounds: int,
                             budget_s: float = 0.0, block_s: float = 0.0,
                             grad_to_none: dict[str, list] | None = None,
                             max_calls: int = 1000) -> dict[str, list[float]]:
    """Milliseconds of every call of each of ``fns``, timed in interleaved rounds: a round runs
    each function in turn for a block of calls lasting about ``block_s`` (one call at least), so
    that a slow spell of the machine, which lasts seconds to minutes here, falls on all of them
    alike rather than on whichever was being timed. Two untimed warm-up rounds of one call each
    come first; then at least ``min_rounds`` rounds, and more while the whole run is within
    ``budget_s`` and some function has fewer than ``max_calls`` calls. ``grad_to_none``: per
    function, tensors whose ``.grad`` is reset before each call."""
    grads = grad_to_none or {}

    def timed(name: str) -> float:
        for t in grads.get(name, ()):
            t.grad = None
        start = time.perf_counter()
        fns[name]()
        return 1000 * (time.perf_counter() - start)

    for _ in range(2):
        for name in fns:
            timed(name)
    block = {name: max(1, int(block_s * 1000 / max(timed(name), 1e-6))) if block_s else 1
             for name in fns}
    times: dict[str, list[float]] = {name: [] for name in fns}
    deadline = time.perf_counter() + budget_s
    rounds = 0
    while rounds < min_rounds or (time.perf_counter() < deadline
                                  and min(map(len, times.values())) < max_calls):
        for name in fns:
            times[name] += [timed(name) for _ in range(block[name])]
        rounds += 1
    return times


def copy_bandwidth_gbps(device: torch.device, smoke: bool, megabytes: int = 256) -> float:
    """The device's measured copy bandwidth (read + write bytes per second), the 100% line."""
    if smoke:
        return float("nan")
    src = torch.empty(megabytes * 2**20 // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    ms = bench_ms(lambda: dst.copy_(src), device, smoke)
    return 2 * src.numel() * 4 / ms / 1e6


def peak_tflops(device: torch.device, smoke: bool) -> dict:
    """Measured fp32 throughput of the two kernels a training step's FLOPs go to: a large
    square matmul (TF32 where PyTorch's defaults allow it) and a large 3x3 convolution in the
    layout that runs it fastest. Their maximum is the practical ceiling a step is compared with.

    The matmul alone is no ceiling on every CPU: on this project's 2-core CPUs oneDNN's
    convolutions run well above MKL's sgemm, so a step could sit "above" it.
    """
    if smoke:
        return {"matmul_tflops": float("nan"), "conv_tflops": float("nan"),
                "peak_tflops": float("nan")}
    n = 8192 if device.type == "cuda" else 2048
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    matmul = 2 * n**3 / bench_ms(lambda: a @ b, device, smoke) / 1e9
    conv_tflops = 0.0
    for layout in (torch.contiguous_format, torch.channels_last):
        conv = torch.nn.Conv2d(128, 128, 3, padding=1, bias=False).to(device, memory_format=layout)
        x = torch.randn(128, 128, 16, 16, device=device).contiguous(memory_format=layout)
        with torch.no_grad():
            ms = bench_ms(lambda: conv(x), device, smoke)
        conv_tflops = max(conv_tflops, 2 * x.numel() * 128 * 9 / ms / 1e9)
    return {"matmul_tflops": matmul, "conv_tflops": conv_tflops,
            "peak_tflops": max(matmul, conv_tflops)}


def peak_memory_mb(fn: Callable[[], object], device: torch.device) -> float:
    """Peak memory that one call allocates beyond what was live before it: the CUDA
    allocator's statistics, or on a CPU the running sum of the profiler's allocation events."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    live = peak = 0
    for e in events:
        live += e.nbytes()
        peak = max(peak, live)
    return peak / 2**20


def write_csv(rows: list[dict], path: Path) -> Path:
    fields = list(dict.fromkeys(k for row in rows for k in row))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {path} ({len(rows)} rows)")
    return path


def markdown_table(rows: list[dict], columns: dict[str, str]) -> str:
    """A README table (``columns``: CSV field -> header) built from result rows."""
    def cell(v):
        return f"{v:.3g}" if isinstance(v, float) else str(v)
    lines = ["| " + " | ".join(columns.values()) + " |",
             "| " + " | ".join("---" for _ in columns) + " |"]
    lines += ["| " + " | ".join(cell(r.get(k, "")) for k in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


README_STAMP = ("device", "threads", "torch", "triton", "command")


def write_readme(out_dir: Path) -> Path:
    """Regenerates the README.md of the device folder that holds ``out_dir`` (the child of
    ``bench/results`` above it, else ``out_dir`` itself): every markdown table a bench command
    wrote below it, each under the device, versions and command stamped on its CSV's first
    row. The folder's own notes go above a marker line and are kept."""
    out_dir = Path(out_dir).resolve()
    results = (Path("bench") / "results").resolve()
    folder = out_dir
    if results in out_dir.parents:
        folder = results / out_dir.relative_to(results).parts[0]
    path = folder / "README.md"
    notes = path.read_text().split(README_MARKER)[0].rstrip() + "\n\n" if path.exists() else (
        f"# Results: {folder.name}\n\n")
    sections = []
    for table in sorted(p for p in folder.rglob("*.md") if p.name != "README.md"):
        csv_path = table.with_suffix(".csv")
        stamp = ""
        if csv_path.exists():
            with open(csv_path, newline="") as f:
                first = next(csv.DictReader(f), {})
            stamp = ", ".join(f"{k} {first[k]}" for k in README_STAMP[:-1] if first.get(k))
            if first.get("command"):
                stamp += f"; command: `{first['command']}`"
        sections.append(f"### `{table.relative_to(folder)}`\n\n{stamp}\n\n{table.read_text()}")
    path.write_text(notes + README_MARKER + "\n\n" + "\n".join(sections))
    print(f"wrote {path}")
    return path


README_MARKER = ("## Tables (regenerated by `python -m bench.kernels` and `python -m "
                 "bench.train_step`; edit above this line only)")
