"""End-to-end benchmark: the notebook's full training step on SVHN-shaped synthetic data.

Variants: ``eager`` (the PyTorch twins), ``fused`` (the Triton kernels), ``compile``
(torch.compile of the twin models) and ``fused+cudagraph`` (the whole fused step, optimizer
included, captured in one CUDA graph). For each: ms/step (``triton.testing.do_bench`` median),
images/s, the time of one SVHN epoch (73,257 images), peak memory, the step's FLOPs counted by
``torch.utils.flop_counter`` and their fraction of the matmul throughput measured in the same
run. Output: ``train_step.csv`` and ``train_step.png`` under ``bench/results/<gpu>/``.

    python -m bench.train_step             # on a GPU, batch 128 and 512
    python -m bench.train_step --smoke     # tiny model on CPU: checks the harness only
"""
from __future__ import annotations

import argparse

import torch
import triton
from torch.utils.flop_counter import FlopCounterMode

import ssgan.kernels as K
from bench import common
from ssgan.data import Dataset, Split
from ssgan.train import TrainConfig, Trainer

SVHN_TRAIN_IMAGES = 73_257
VARIANTS = ("eager", "fused", "compile", "fused+cudagraph")


def synthetic_svhn(n: int, size: int = 32) -> Dataset:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (n,), generator=g)
    return Dataset(Split(images, labels), None, 10)


def make_trainer(variant: str, batch: int, smoke: bool, device: torch.device) -> Trainer:
    cfg = TrainConfig(batch_size=batch, labels=1000 if not smoke else 20, device=str(device),
                      kernels="torch" if variant in ("eager", "compile") else "auto",
                      progress=False, out_dir="/nonexistent")
    if smoke:
        cfg.d_size_mult, cfg.g_size_mult, cfg.z_dim = 4, 4, 8
    trainer = Trainer(cfg, synthetic_svhn(max(4 * batch, 1000 if not smoke else 64)))
    if variant == "compile":
        backend = "aot_eager" if smoke else "inductor"
        trainer.g = torch.compile(trainer.g, backend=backend)
        trainer.d = torch.compile(trainer.d, backend=backend)
    if variant == "fused+cudagraph":
        # a graph replays fixed addresses: Adam must keep its step counter on the device
        betas = (cfg.beta1, 0.999)
        trainer.opt_d = torch.optim.Adam(trainer.d.parameters(), cfg.lr, betas, capturable=True)
        trainer.opt_g = torch.optim.Adam(trainer.g.parameters(), cfg.lr, betas, capturable=True)
    return trainer


def step_fn(trainer: Trainer, variant: str):
    """A zero-argument callable that runs one training step of ``variant``."""
    idx = torch.arange(trainer.cfg.batch_size, device=trainer.device)
    step = lambda: trainer.step(idx)
    if variant != "fused+cudagraph":
        return step
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):  # warm-up outside the graph: autotuning, allocator, optimizer state
            step()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    graph.register_generator_state(trainer.batch_rng.graphsafe_get_state())
    with torch.cuda.graph(graph):
        step()
    return graph.replay


def step_flops(batch: int, smoke: bool, device: torch.device) -> int:
    """FLOPs of one step (forward and backward of both players), counted on the eager model:
    they are a property of the step, the same for every variant."""
    trainer = make_trainer("eager", batch, smoke, device)
    counter = FlopCounterMode(display=False)
    with counter, K.use_backend("torch"):
        trainer.step(torch.arange(batch, device=device))
    return counter.get_total_flops()


def matmul_tflops(smoke: bool) -> float:
    """Measured fp32 matmul throughput (TF32 allowed as PyTorch's default permits), the 100%
    line for the step's FLOPs."""
    if smoke:
        return float("nan")
    a = torch.randn(8192, 8192, device="cuda")
    b = torch.randn(8192, 8192, device="cuda")
    ms = triton.testing.do_bench(lambda: a @ b, return_mode="median")
    return 2 * 8192**3 / ms / 1e9


def run_variant(variant: str, batch: int, smoke: bool, device: torch.device,
                flops: int, peak_tflops: float) -> dict:
    row = {"variant": variant, "batch": batch}
    if variant == "fused+cudagraph" and device.type != "cuda":
        return {**row, "status": "skipped: CUDA graphs need a CUDA device"}
    if variant == "fused" and device.type == "cpu" and K.backend_for(torch.zeros(1)) == "torch":
        return {**row, "status": "skipped: no Triton path on CPU without TRITON_INTERPRET=1"}
    try:
        trainer = make_trainer(variant, batch, smoke, device)
        with K.use_backend(trainer.cfg.kernels):
            run = step_fn(trainer, variant)
            ms = common.bench_ms(run, smoke)
            peak = common.peak_memory_mb(run, device)
    except Exception as err:  # a variant that cannot run is reported, not fatal
        return {**row, "status": f"failed: {type(err).__name__}: {err}".splitlines()[0]}
    tflops = flops / ms / 1e9
    return {**row, "status": "ok", "ms_per_step": ms, "images_per_s": batch / ms * 1e3,
            "svhn_epoch_s": SVHN_TRAIN_IMAGES / batch * ms / 1e3, "peak_mem_mb": peak,
            "gflop_per_step": flops / 1e9, "achieved_tflops": tflops,
            "matmul_tflops": peak_tflops, "pct_matmul_peak": 100 * tflops / peak_tflops}


def plot(rows: list[dict], path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    ok = [r for r in rows if r["status"] == "ok"]
    batches = sorted({r["batch"] for r in ok})
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    width = 0.8 / max(1, len(VARIANTS))
    for i, variant in enumerate(VARIANTS):
        vals = [next((r["ms_per_step"] for r in ok if r["variant"] == variant
                      and r["batch"] == b), 0.0) for b in batches]
        ax.bar([j + i * width for j in range(len(batches))], vals, width, label=variant)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(batches))],
                  [f"batch {b}" for b in batches])
    ax.set_ylabel("ms per training step (lower is better)")
    ax.set_title(f"training step, {rows[0]['gpu']}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.train_step", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_common_args(parser)
    parser.add_argument("--batches", nargs="+", type=int, default=None,
                        help="batch sizes (default: 128 512; smoke: 8)")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    args = parser.parse_args(argv)
    device, env, out_dir = common.setup(args)
    peak = matmul_tflops(args.smoke)
    rows = []
    for batch in args.batches or ([8] if args.smoke else [128, 512]):
        flops = step_flops(batch, args.smoke, device)
        for variant in args.variants:
            row = {**run_variant(variant, batch, args.smoke, device, flops, peak), **env}
            rows.append(row)
            print({k: v for k, v in row.items() if k not in env})
    common.write_csv(rows, out_dir / "train_step.csv")
    plot(rows, out_dir / "train_step.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
