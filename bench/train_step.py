"""End-to-end benchmark: a recipe's full training step (``--recipe``: the notebook's, or the
improved one that a bare ``ssgan train`` runs) on synthetic data of the recipe's shapes.

Variants, all measured in the same run:
- ``ssgan``: the trainer's graph-ready step run eagerly, with its default kernels (compiled
  Triton on a GPU, the Inductor-compiled CPU path on a CPU): what ``ssgan train`` runs on a
  CPU, and with ``--cuda-graph off`` on a GPU;
- ``ssgan+cudagraph``: the same step replayed from one CUDA graph, as ``ssgan train`` runs it
  on a GPU (GPU only);
- the baselines (``bench/stock.py``): ``stock``, the same model and step written with stock
  PyTorch as a user would; ``stock+compile``, its ``torch.compile``;
  ``stock+reduce-overhead``, its ``torch.compile(mode="reduce-overhead")`` (GPU only); and
  ``stock+cudagraph``, the stock step with the trainer's optimizers captured in a CUDA graph
  exactly as the trainer captures its own (GPU only). Every ratio ``vs best stock`` is taken
  against the fastest of these at the same batch size, named in ``best_stock``;
- ``stock+channels_last``: the stock model in the channels-last layout the ssgan step uses on
  a CPU, to show how much of a gain is layout rather than fusion (not a baseline);
- ``ssgan+one-pass`` / ``ssgan+multi-pass`` and ``ssgan+fused-bn`` / ``ssgan+aten-bn``: the
  ssgan step with one of its device's decisions set (``DevicePolicy.one_pass_discriminator``:
  D once over the concatenated segments or once per segment; ``fused_batch_norm``: the fused
  batch-norm op or ATen's batch norm and then the activation), the measurements behind those
  decisions (``ssgan`` is the device's own choice, one of each pair); on a GPU they are timed
  as ``ssgan train`` runs there, from a CUDA graph (``ssgan+multi-pass+cudagraph``,
  ``ssgan+aten-bn+cudagraph``, and the layout and deconvolution decisions
  ``ssgan+channels-last+cudagraph``, ``ssgan+subpixel+cudagraph`` and
  ``ssgan+bf16+channels-first+cudagraph``);
- ``reference``: the trainer on ssgan's eager PyTorch twins (a correctness reference, never a
  baseline);
- with ``--precision bf16``: ``ssgan+bf16`` (``ssgan train --precision bf16``'s step, and its
  ``+cudagraph`` on a GPU) and the bf16 baselines, the stock step with its forward under
  ``torch.autocast`` in bfloat16 (``stock+bf16``), compiled (``stock+bf16+compile``) and on a
  GPU ``+reduce-overhead`` and ``+cudagraph``, timed in the same run as ssgan's and stock's
  fp32 steps.

Reported per variant: the first step's time (compilation included: ``warmup_s``), the median
steady-state ms/step, images/s, one SVHN epoch (73,257 images), peak memory of a step, and the
step's FLOPs as a share of the best of a large matmul's and a large convolution's throughput
measured in the same run (``common.peak_tflops``). On a CPU the
variants are timed in interleaved rounds, so that a slow spell of the machine hits all alike.
Output: ``train_step.csv``, ``train_step.md`` and ``train_step.png`` under ``bench/results/``.

    python -m bench.train_step                    # GPU if visible, else CPU (batch 128)
    python -m bench.train_step --device cpu --threads 2
    python -m bench.train_step --device cpu --threads 2 --precision bf16
    python -m bench.train_step --device cpu --threads 2 --recipe improved
    python -m bench.train_step --smoke            # tiny model: checks the harness only
"""
from __future__ import annotations

import argparse
import contextlib
import statistics
import time
import traceback

import torch
from torch.utils.flop_counter import FlopCounterMode

import ssgan.kernels as K
from bench import common, stock
from ssgan.data import Dataset, Split
from ssgan.config import config_for
from ssgan.cuda_graph import WARMUP_STEPS, StepGraph
from ssgan.devices import decisions_of
from ssgan.train import Trainer

SVHN_TRAIN_IMAGES = 73_257
# the ssgan step with some of the device's decisions (ssgan.devices.DevicePolicy) set, one tag
# each in the variant's name ("ssgan+multi-pass+cudagraph")
DECISIONS = {"one-pass": {"one_pass_discriminator": True},
             "multi-pass": {"one_pass_discriminator": False},
             "fused-bn": {"fused_batch_norm": True},
             "aten-bn": {"fused_batch_norm": False},
             "channels-last": {"memory_format": torch.channels_last,
                               "bf16_memory_format": torch.channels_last},
             "channels-first": {"memory_format": torch.contiguous_format,
                                "bf16_memory_format": torch.contiguous_format},
             "subpixel": {"subpixel_deconv": True},
             "aten-conv-grads": {"rewritten_conv_grads": False}}
VARIANTS = ("ssgan", "ssgan+cudagraph", "ssgan+one-pass", "ssgan+multi-pass", "ssgan+fused-bn",
            "ssgan+aten-bn", "ssgan+aten-conv-grads", "ssgan+multi-pass+cudagraph",
            "ssgan+aten-bn+cudagraph", "ssgan+channels-last+cudagraph", "ssgan+subpixel+cudagraph",
            "stock", "stock+compile", "stock+reduce-overhead", "stock+cudagraph",
            "stock+channels_last", "reference", "ssgan+bf16", "ssgan+bf16+aten-conv-grads",
            "ssgan+bf16+cudagraph", "ssgan+bf16+channels-first+cudagraph", "stock+bf16",
            "stock+bf16+compile", "stock+bf16+reduce-overhead", "stock+bf16+cudagraph")
BASELINES = ("stock", "stock+compile", "stock+reduce-overhead", "stock+cudagraph", "stock+bf16",
             "stock+bf16+compile", "stock+bf16+reduce-overhead", "stock+bf16+cudagraph")
GPU_ONLY = tuple(v for v in VARIANTS if v.endswith(("+cudagraph", "+reduce-overhead")))
# --precision bf16 times the bf16 variants beside fp32's (ssgan's and stock's) in one run
PRECISION_VARIANTS = {
    "fp32": tuple(v for v in VARIANTS if "+bf16" not in v),
    "bf16": ("ssgan+bf16", "ssgan+bf16+aten-conv-grads", "ssgan+bf16+cudagraph",
             "ssgan+bf16+channels-first+cudagraph", "ssgan", "stock", "stock+compile",
             "stock+bf16", "stock+bf16+compile", "stock+bf16+reduce-overhead",
             "stock+bf16+cudagraph"),
}


def variant_precision(variant: str) -> str:
    return "bf16" if "+bf16" in variant else "fp32"


def synthetic_svhn(n: int, size: int = 32) -> Dataset:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (n,), generator=g)
    return Dataset(Split(images, labels), None, 10)


def synthetic_data(recipe: str, n: int) -> Dataset:
    """Random images of the recipe's dataset's shapes: SVHN's 3x32x32, or MNIST's 1x32x32."""
    if config_for(recipe).dataset != "mnist":
        return synthetic_svhn(n)
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 1, 32, 32), dtype=torch.uint8, generator=g)
    return Dataset(Split(images, torch.randint(0, 10, (n,), generator=g)), None, 10)


def make_trainer(variant: str, batch: int, smoke: bool, device: torch.device,
                 recipe: str = "notebook", kernels: str = "auto") -> Trainer:
    """The trainer whose step ``variant`` times; ``kernels``: its ``--kernels`` (the eager
    twins for ``reference``)."""
    labels = config_for(recipe).labels if not smoke else 20
    cfg = config_for(recipe, batch_size=batch, labels=labels, device=str(device),
                     kernels="torch" if variant == "reference" else kernels, progress=False,
                     out_dir="/nonexistent",
                     precision=variant_precision(variant) if variant.startswith("ssgan")
                     else "fp32")
    if smoke:
        cfg.d_size_mult, cfg.g_size_mult, cfg.z_dim = 4, 4, 8
        cfg.labeled_batch_size = min(cfg.labeled_batch_size, batch)
    trainer = Trainer(cfg, synthetic_data(recipe, max(4 * batch, 1000 if not smoke else 64)))
    trainer.batch_idx.copy_(torch.arange(batch, device=device))
    return trainer


def decisions(variant: str, device: torch.device):
    """The device's own decisions, with those ``variant``'s name sets."""
    changes = {k: v for tag in variant.split("+") for k, v in DECISIONS.get(tag, {}).items()}
    return decisions_of(device.type, **changes) if changes else contextlib.nullcontext()


def step_fn(variant: str, batch: int, smoke: bool, device: torch.device,
            recipe: str = "notebook"):
    """A zero-argument callable that runs one training step of ``variant``, through the
    trainer's :class:`ssgan.cuda_graph.StepGraph` (which captures the ``+cudagraph`` ones)."""
    with decisions(variant, device):
        trainer = make_trainer(variant, batch, smoke, device, recipe)
    graphed = variant.endswith("+cudagraph")
    if variant.startswith("stock"):
        compile_mode = ("default" if variant.endswith("+compile") else "reduce-overhead"
                        if variant.endswith("+reduce-overhead") else None)
        g, d = stock.stock_models(trainer, compile_mode=compile_mode,
                                  channels_last=variant == "stock+channels_last",
                                  trainer_optimizers=graphed)
        precision = variant_precision(variant)
        step = lambda: stock.stock_step(trainer, g, d, trainer.batch_idx, precision)
    else:
        check = K.DeferredTargetCheck()

        def step():  # as the trainer's loop runs it
            with decisions(variant, device), K.deferred_target_checks(check):
                trainer.graph_ready_step()
    runner = StepGraph(step, device, capture=graphed, generators=[trainer.batch_rng])

    def run():
        runner()
        # a graph reads fixed addresses: the trainer (models, optimizer state, data, buffers)
        # must outlive it, or their freed memory is reused and a replay gathers garbage
        # indices (a device-side assert on an H100 once other variants had allocated)
        return trainer
    run.step_graph = runner
    return run


def step_flops(batch: int, smoke: bool, device: torch.device, recipe: str) -> int:
    """FLOPs of one step (forward and backward of both players), counted on the stock model:
    they are a property of the step, the same for every variant."""
    run = step_fn("stock", batch, smoke, device, recipe)
    counter = FlopCounterMode(display=False)
    with counter:
        run()
    return counter.get_total_flops()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def prepare(variant: str, batch: int, smoke: bool, device: torch.device,
            recipe: str = "notebook") -> dict:
    """Builds the variant and runs its first step (the compile warm-up, timed)."""
    row: dict = {"variant": variant, "recipe": recipe, "batch": batch}
    if variant in GPU_ONLY and device.type != "cuda":
        return {**row, "status": "skipped: CUDA graphs need a CUDA device"}
    try:
        start = time.perf_counter()
        run = step_fn(variant, batch, smoke, device, recipe)
        for _ in range(1 + graph_warmup(variant)):  # through capture, for graphed variants
            run()
        _sync(device)
        row["warmup_s"] = time.perf_counter() - start
        if variant.endswith("+cudagraph") and not run.step_graph.captured:
            # StepGraph went on eagerly (its line in the log says why): not a graph's time
            return {**row, "status": "failed: the step could not be captured in a CUDA graph"}
    except Exception as err:  # a variant that cannot run is reported, not fatal
        traceback.print_exc()  # the row keeps one line; the log keeps where it failed
        return {**row, "status": f"failed: {type(err).__name__}: {err}".splitlines()[0]}
    return {**row, "status": "ok", "run": run}


def graph_warmup(variant: str) -> int:
    """Eager steps a variant runs before its capture (0 for the variants that never capture)."""
    return WARMUP_STEPS if variant.endswith("+cudagraph") else 0


def measure(prepared: list[dict], device: torch.device, smoke: bool, rounds: int) -> None:
    """Fills ``ms_per_step`` of every runnable variant: do_bench on a GPU; on a CPU, two
    untimed warm-up rounds, then ``rounds`` interleaved rounds of one step per variant."""
    ok = [p for p in prepared if p["status"] == "ok"]
    if device.type == "cuda" and not smoke:
        for p in ok:
            # a step lasts milliseconds: do_bench's 100 ms gave a handful of repetitions on an
            # H100, too few (stock timed faster at batch 512 than at 128)
            p["ms_per_step"] = common.bench_ms(p["run"], device, smoke, gpu_rep_ms=2000)
        return
    times = common.interleaved_cpu_times_ms({p["variant"]: p["run"] for p in ok},
                                            min_rounds=2 if smoke else rounds)
    for p in ok:
        p["ms_per_step"] = statistics.median(times[p["variant"]])
        q = statistics.quantiles(times[p["variant"]], n=4)
        p["ms_q1"], p["ms_q3"] = q[0], q[2]


def finish(p: dict, device: torch.device, flops: int, peak: dict) -> dict:
    run = p.pop("run", None)
    if run is None:
        return p
    ms, batch = p["ms_per_step"], p["batch"]
    tflops = flops / ms / 1e9
    return {**p, "images_per_s": batch / ms * 1e3,
            "svhn_epoch_s": SVHN_TRAIN_IMAGES / batch * ms / 1e3,
            # a graph replay allocates nothing: its memory is the private pool of the capture,
            # which the allocator's peak does not see, so it is left unmeasured
            "peak_mem_mb": "" if p["variant"].endswith("+cudagraph")
            else common.peak_memory_mb(run, device), "gflop_per_step": flops / 1e9,
            "achieved_tflops": tflops, **peak, "pct_peak": 100 * tflops / peak["peak_tflops"]}


def add_speedups(rows: list[dict]) -> None:
    """``speedup_vs_<baseline>``: baseline ms / variant ms, within the same batch size; and
    ``speedup_vs_best_stock`` against the fastest baseline there, named in ``best_stock``."""
    for row in rows:
        if "ms_per_step" not in row:
            continue
        refs = {r["variant"]: r["ms_per_step"] for r in rows if r["variant"] in BASELINES
                and r["batch"] == row["batch"] and "ms_per_step" in r}
        for base, ms in refs.items():
            row[f"speedup_vs_{base}"] = ms / row["ms_per_step"]
        if refs:
            row["best_stock"] = min(refs, key=refs.get)
            row["speedup_vs_best_stock"] = refs[row["best_stock"]] / row["ms_per_step"]


def plot(rows: list[dict], path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    ok = [r for r in rows if r["status"] == "ok"]
    batches = sorted({r["batch"] for r in ok})
    names = [v for v in VARIANTS if any(r["variant"] == v for r in ok)]
    fig, ax = plt.subplots(figsize=(8, 4), dpi=110)
    width = 0.8 / max(1, len(names))
    for i, variant in enumerate(names):
        vals = [next((r["ms_per_step"] for r in ok if r["variant"] == variant
                      and r["batch"] == b), 0.0) for b in batches]
        ax.bar([j + i * width for j in range(len(batches))], vals, width, label=variant)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(batches))],
                  [f"batch {b}" for b in batches])
    ax.set_ylabel("ms per training step (lower is better)")
    threads = f", {rows[0]['threads']} threads" if rows[0]["threads"] else ""
    ax.set_title(f"{rows[0]['recipe']} training step, {rows[0]['device']}{threads}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


TABLE = {"variant": "variant", "recipe": "recipe", "batch": "batch",
         "ms_per_step": "ms/step (median)",
         "speedup_vs_stock": "vs stock", "speedup_vs_stock+compile": "vs stock+compile",
         "speedup_vs_best_stock": "vs best stock", "best_stock": "best stock",
         "warmup_s": "first step, s", "peak_mem_mb": "peak MB", "pct_peak":
         "% of peak FLOP/s"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.train_step", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_common_args(parser)
    parser.add_argument("--batches", nargs="+", type=int, default=None,
                        help="batch sizes (default: 128, plus 512 on a GPU; smoke: 8)")
    parser.add_argument("--recipe", choices=("notebook", "improved"), default="notebook",
                        help="whose step: the notebook's (SVHN shapes) or the improved one "
                        "(MNIST shapes; a bare ssgan train) (default: notebook)")
    parser.add_argument("--precision", choices=list(PRECISION_VARIANTS), default="fp32",
                        help="fp32 variants only, or bf16's beside ssgan's and stock's fp32 "
                        "(default: fp32)")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=None,
                        help="default: every variant of --precision")
    parser.add_argument("--rounds", type=int, default=30,
                        help="CPU: timed interleaved rounds (default 30)")
    args = parser.parse_args(argv)
    device, env, out_dir = common.setup(args)
    peak = common.peak_tflops(device, args.smoke)
    default_batches = [8] if args.smoke else ([128, 512] if device.type == "cuda" else [128])
    rows = []
    for batch in args.batches or default_batches:
        flops = step_flops(batch, args.smoke, device, args.recipe)
        prepared = [prepare(v, batch, args.smoke, device, args.recipe)
                    for v in args.variants or PRECISION_VARIANTS[args.precision]]
        measure(prepared, device, args.smoke, args.rounds)
        batch_rows = [{**finish(p, device, flops, peak), **env} for p in prepared]
        for row in batch_rows:  # as each batch ends, so that a run cut off keeps what it had
            print({k: v for k, v in row.items() if k not in env}, flush=True)
        rows += batch_rows
    add_speedups(rows)
    common.write_csv(rows, out_dir / "train_step.csv")
    (out_dir / "train_step.md").write_text(common.markdown_table(rows, TABLE))
    plot(rows, out_dir / "train_step.png")
    common.write_readme(out_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
