"""Per-op benchmark: ssgan's ops against the same op written with stock PyTorch.

Providers: ``ssgan`` (the default path: compiled Triton on a GPU, the Inductor-compiled twins
on a CPU), ``stock`` (what a user writes, ``bench.stock``'s: ``F.leaky_relu`` + ``F.dropout``
after a per-channel affine or ``F.batch_norm``, ``torch.logsumexp``, ``F.cross_entropy``, the
BCEs and the entropy of the loss head, feature matching's means), ``stock+compile`` (its
``torch.compile``)
and ``reference`` (ssgan's eager twins: a correctness reference, never a baseline; on a CPU
only at the model's shapes, where it finishes).

For every op, every shape the batch-128 models use plus a sweep to memory-bound sizes (up to
512 MB per tensor on a GPU, 32 MB on a CPU), and forward / backward / forward+backward, it
records the median time (on a CPU the providers take turns in interleaved rounds, so that a
slow spell of the machine hits them alike), the achieved GB/s from the bytes the op must move,
that as a percentage of the copy bandwidth measured in the same run, and the peak memory of
forward+backward. Output: ``kernels.csv``, ``kernels.md`` and PNG plots under
``bench/results/<gpu>`` or ``bench/results/cpu-<cpu>``.

The model's leaky-ReLU blocks run channels-first, as a user's model is by default, and on a
CPU also channels-last, the layout ssgan's trainer gives the models there, except the input
dropout (its images stay channels-first); the ``layout`` column says which, and every provider
runs on the same tensors. The sweeps are channels-first.

    python -m bench.kernels                          # GPU if visible, else CPU
    python -m bench.kernels --device cpu --threads 2
    python -m bench.kernels --smoke                  # tiny shapes: checks the harness only
"""
from __future__ import annotations

import argparse
import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

import ssgan.kernels as K
from bench import common, stock
from ssgan.devices import policy
from ssgan.kernels import reference as ref
from ssgan.models import BN_EPS

PROVIDERS = ("ssgan", "stock", "stock+compile", "reference")
BASELINES = ("stock", "stock+compile")
MODES = ("fwd", "bwd", "fwd+bwd")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class Case:
    op: str
    variant: str
    label: str                      # where the shape comes from (a model layer, or "sweep")
    shape: tuple
    layout: str                     # 4-D input: "channels_first" or "channels_last"; 2-D: "rows"
    make: Callable[[], tuple]       # fresh inputs; the differentiable one first
    fns: dict[str, Callable]        # provider -> function of the inputs
    bytes_fwd: int
    bytes_bwd: int

    @property
    def megabytes(self) -> float:
        return math.prod(self.shape) * 4 / 2**20


# ---------------------------------------------------------------- the ops in stock PyTorch

def _channel(v, x):
    return v.view(1, -1, *([1] * (x.dim() - 2)))


def _lrd_stock(x, scale, shift, slope, p):
    """A folded BatchNorm's affine, ``F.leaky_relu`` and ``F.dropout``, as a user writes them."""
    z = x * _channel(scale, x) + _channel(shift, x) if scale is not None else x
    return F.dropout(F.leaky_relu(z, slope), p, training=True)


def _compiled(fn, backend):
    return torch.compile(fn, backend=backend, dynamic=False)


def _providers(ssgan, stock, reference, compile_backend, with_reference) -> dict:
    fns = {"ssgan": ssgan, "stock": stock, "stock+compile": _compiled(stock, compile_backend)}
    if with_reference:
        fns["reference"] = reference
    return fns


def _layout(channels_last: bool) -> str:
    return "channels_last" if channels_last else "channels_first"


ROWS = "rows"  # the heads' and the CE's (B, K) logits: one row per sample, contiguous


def lrd_case(label, shape, affine, p, dtype, device, compile_backend, slope=0.2,
             with_reference=True, channels_last=False) -> Case:
    memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def make():
        x = torch.randn(shape, dtype=dtype, device=device).contiguous(
            memory_format=memory_format).requires_grad_()
        if not affine:
            return x, None, None
        return (x, (torch.rand(shape[1], device=device) + 0.5).requires_grad_(),
                torch.randn(shape[1], device=device).requires_grad_())

    def ssgan(x, s, b):
        return K.leaky_relu_dropout(x, negative_slope=slope, p=p, scale=s, shift=b)

    def reference(x, s, b):
        return ref.leaky_relu_dropout(x, negative_slope=slope, p=p, scale=s, shift=b)

    numel, size = math.prod(shape), torch.finfo(dtype).bits // 8
    return Case("leaky_relu_dropout", f"affine={affine},p={p}", label, shape,
                _layout(channels_last), make,
                _providers(ssgan, lambda x, s, b: _lrd_stock(x, s, b, slope, p), reference,
                           compile_backend, with_reference),
                bytes_fwd=2 * numel * size, bytes_bwd=3 * numel * size)


def gan_logits_case(label, batch, cols, extra, dtype, device, compile_backend,
                    with_reference=True) -> Case:
    def make():
        return ((torch.randn(batch, cols, dtype=dtype, device=device) * 3).requires_grad_(),)

    size = torch.finfo(dtype).bits // 8
    return Case("gan_logits", f"extra_class={extra}", label, (batch, cols), ROWS, make,
                _providers(lambda z: K.gan_logits(z, extra_class=extra),
                           lambda z: stock.gan_logits(z, extra),
                           lambda z: ref.gan_logits(z, extra_class=extra), compile_backend,
                           with_reference),
                bytes_fwd=batch * cols * size + batch * (size + 4),
                bytes_bwd=2 * batch * cols * size + batch * (size + 4))


def mce_case(label, batch, cols, dtype, device, compile_backend, with_reference=True) -> Case:
    def make():
        z = torch.randn(batch, cols, dtype=dtype, device=device) * 3
        target = torch.randint(0, cols, (batch,), device=device)
        mask = torch.rand(batch, device=device) < 0.5
        return z.requires_grad_(), torch.where(mask, target, -1), mask

    size = torch.finfo(dtype).bits // 8
    return Case("masked_cross_entropy", f"classes={cols}", label, (batch, cols), ROWS, make,
                _providers(K.masked_cross_entropy, stock.masked_cross_entropy,
                           ref.masked_cross_entropy, compile_backend, with_reference),
                bytes_fwd=batch * (cols * size + 8 + 1 + 4),
                bytes_bwd=batch * (2 * cols * size + 8 + 1 + 4))


def bn_case(label, shape, p, dtype, device, compile_backend, slope=0.2, with_reference=True,
            channels_last=False) -> Case:
    """The BatchNorm block (batch statistics of one segment, affine, leaky ReLU, dropout),
    moving running statistics as ``nn.BatchNorm2d`` in training does."""
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    channels = shape[1]

    def make():
        x = (torch.randn(shape, dtype=dtype, device=device) * 2 + 1).contiguous(
            memory_format=memory_format).requires_grad_()
        return (x, (torch.rand(channels, device=device) + 0.5).requires_grad_(),
                torch.randn(channels, device=device).requires_grad_(),
                torch.zeros(channels, device=device), torch.ones(channels, device=device))

    def ssgan(x, w, b, mean, var):
        return K.batch_norm_leaky_relu_dropout(x, w, b, running_mean=mean, running_var=var,
                                               momentum=0.1, eps=BN_EPS, negative_slope=slope,
                                               p=p)

    def reference(x, w, b, mean, var):
        return ref.batch_norm_leaky_relu_dropout(x, w, b, running_mean=mean, running_var=var,
                                                 momentum=0.1, eps=BN_EPS,
                                                 negative_slope=slope, p=p)

    def stock_(x, w, b, mean, var):
        return stock.batch_norm_leaky_relu_dropout(x, w, b, mean, var, 0.1, BN_EPS, slope, p)

    numel, size = math.prod(shape), torch.finfo(dtype).bits // 8
    return Case("batch_norm_leaky_relu_dropout", f"p={p}", label, shape,
                _layout(channels_last), make,
                _providers(ssgan, stock_, reference, compile_backend, with_reference),
                bytes_fwd=2 * numel * size, bytes_bwd=3 * numel * size)


def head_case(label, segments, cols, extra, dtype, device, compile_backend,
              with_reference=True) -> Case:
    """The loss head over the class logits of the segments (real, fake[, labeled]), half of
    the supervised rows labeled."""
    rows, sup = sum(segments), segments[2] if len(segments) == 3 else segments[0]
    classes = cols - int(extra)

    def make():
        z = torch.randn(rows, cols, dtype=dtype, device=device) * 3
        mask = torch.rand(sup, device=device) < 0.5
        target = torch.where(mask, torch.randint(0, classes, (sup,), device=device), -1)
        return z.requires_grad_(), target, mask

    def call(head):
        return lambda z, t, m: head(z, t, m, segments=segments, extra_class=extra)

    size = torch.finfo(dtype).bits // 8
    return Case("gan_loss_head", f"extra_class={extra},segments={len(segments)}", label,
                (rows, cols), ROWS, make,
                _providers(call(K.gan_loss_head),
                           lambda z, t, m: stock.gan_loss_head(z, t, m, segments, extra),
                           call(ref.gan_loss_head), compile_backend, with_reference),
                bytes_fwd=rows * cols * size + sup * 9, bytes_bwd=2 * rows * cols * size)


def fm_case(label, rows, features, dtype, device, compile_backend, with_reference=True) -> Case:
    """Feature matching between a real and a fake batch of ``rows`` feature vectors."""
    def make():
        real = torch.randn(rows, features, dtype=dtype, device=device).requires_grad_()
        return real, torch.randn(rows, features, dtype=dtype, device=device).requires_grad_()

    numel, size = rows * features, torch.finfo(dtype).bits // 8
    return Case("feature_matching", f"features={features}", label, (rows, features), ROWS,
                make, _providers(K.feature_matching, stock.feature_matching,
                                 ref.feature_matching, compile_backend, with_reference),
                bytes_fwd=2 * numel * size, bytes_bwd=2 * numel * size)


# (label, shape, affine, p, slope): every BatchNorm + leaky-ReLU (+ dropout) block of D and G at
# batch 128 in training, with the BatchNorm folded into the op (affine), the op's scale/shift
# API at the model's shapes. The models themselves run ATen's batch norm first and call the op
# only where a block drops out, without the affine (models.LeakyBlock): those rows are the
# affine=False ones, and the channels-last rows below.
MODEL_BLOCKS = [
    ("D.input_dropout", (128, 3, 32, 32), False, 0.2, 1.0),
    ("D.act1", (128, 64, 16, 16), False, 0.5, 0.2), ("D.act3", (128, 64, 4, 4), True, 0.5, 0.2),
    ("D.act4", (128, 128, 4, 4), True, 0.0, 0.2), ("D.act5", (128, 128, 4, 4), True, 0.0, 0.2),
    ("G.act0", (128, 128, 4, 4), True, 0.0, 0.2), ("G.act1", (128, 64, 8, 8), True, 0.0, 0.2),
    ("G.act2", (128, 32, 16, 16), True, 0.0, 0.2)]


# blocks that see the images, which the trainer keeps channels-first (ssgan.devices.DevicePolicy)
IMAGE_BLOCKS = {"D.input_dropout"}


def cases(dtype, device, smoke, compile_backend,
          channels_last_rows: bool | None = None) -> list[Case]:
    """The discriminator's and generator's shapes at batch 128, then the sweeps (smaller on a
    CPU, where the eager reference is left out of them). ``channels_last_rows``: the model's
    blocks also channels-last, by default where ssgan's trainer runs them so (a CPU), plus the
    BatchNorm block with dropout unfolded, as the model calls the op there."""
    args = (dtype, device, compile_backend)
    if smoke:
        return [lrd_case("D.act3", (4, 3, 4, 4), True, 0.5, *args),
                lrd_case("D.act3", (4, 3, 4, 4), True, 0.5, *args, channels_last=True),
                lrd_case("sweep", (2, 3, 5), False, 0.0, *args),
                gan_logits_case("D.head", 8, 11, True, *args),
                mce_case("D.supervised", 8, 10, *args),
                bn_case("D.act3", (4, 3, 4, 4), 0.5, *args),
                head_case("D.loss_head", (4, 4, 2), 11, True, *args),
                fm_case("D.features", 4, 6, *args)]
    gpu = device.type == "cuda"
    out = [lrd_case(label, shape, affine, p, *args, slope=slope) for label, shape, affine, p, slope
           in MODEL_BLOCKS]
    if channels_last_rows is None:
        channels_last_rows = policy(device).memory_format == torch.channels_last
    if channels_last_rows:
        for label, shape, affine, p, slope in MODEL_BLOCKS:
            if label in IMAGE_BLOCKS:
                continue
            out.append(lrd_case(label, shape, affine, p, *args, slope=slope, channels_last=True))
            if affine and p:  # as the model calls it: ATen's batch norm first, no fold
                out.append(lrd_case(label, shape, False, p, *args, slope=slope,
                                    channels_last=True))
    # the BatchNorm blocks as the model calls the fused op (one segment: a CPU's D pass)
    out += [bn_case(label, shape, p, *args, slope=slope, channels_last=channels_last_rows)
            for label, shape, affine, p, slope in MODEL_BLOCKS if affine]
    out += [gan_logits_case("D.head", 128, 10, False, *args),
            gan_logits_case("D.head", 128, 11, True, *args),
            mce_case("D.supervised", 128, 10, *args), mce_case("D.supervised", 128, 11, *args),
            head_case("D.loss_head", (128, 128), 10, False, *args),       # the notebook's
            head_case("D.loss_head", (128, 128, 64), 10, False, *args),   # the improved one
            fm_case("D.features", 128, 128, *args)]
    sweep = dict(with_reference=gpu)
    for affine in (False, True):   # 8 MB .. 512 MB per fp32 tensor on a GPU, 2 .. 32 MB on CPU
        out += [lrd_case("sweep", (n, 64, 32, 32), affine, 0.5, *args, **sweep)
                for n in ((32, 128, 512, 1024, 2048) if gpu else (8, 32, 128))]
    out += [bn_case("sweep", (n, 64, 32, 32), 0.5, *args, **sweep)
            for n in ((32, 128, 512, 1024, 2048) if gpu else (8, 32, 128))]
    for batch in (2**14, 2**17, 2**20, 2**23) if gpu else (2**14, 2**17, 2**20):
        out += [gan_logits_case("sweep", batch, 11, True, *args, **sweep),
                mce_case("sweep", batch, 11, *args, **sweep),
                head_case("sweep", (batch // 2, batch // 2), 11, True, *args, **sweep),
                fm_case("sweep", batch // 16, 128, *args, **sweep)]
    return out


# ---------------------------------------------------------------- measuring

@dataclass
class _Run:
    """One provider's timed call on a case in one mode, on inputs of its own."""
    call: Callable[[], object]
    leaves: list[torch.Tensor]      # differentiable inputs, whose .grad is reset between calls
    moved: int                      # bytes the op must move
    dtype: torch.dtype


def _run(case: Case, provider: str, mode: str) -> _Run:
    fn = case.fns[provider]
    inputs = case.make()
    leaves = [t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad]

    def forward():
        return fn(*inputs)

    def grad_of(out):
        return torch.randn_like(out) if out.dim() else torch.ones_like(out)

    if mode == "fwd":
        return _Run(forward, leaves, case.bytes_fwd, inputs[0].dtype)
    if mode == "bwd":
        out = forward()
        dy = grad_of(out)
        return _Run(lambda: out.backward(dy, retain_graph=True), leaves, case.bytes_bwd,
                    inputs[0].dtype)
    dy = grad_of(forward())
    return _Run(lambda: forward().backward(dy), leaves, case.bytes_fwd + case.bytes_bwd,
                inputs[0].dtype)


# a CPU round times each provider for about this long before the next one's turn
CPU_BLOCK_S = 0.02


def median_ms(runs: dict[str, _Run], device: torch.device, smoke: bool) -> dict[str, float]:
    """Median milliseconds of each provider's run: ``do_bench`` one provider after another on
    a GPU; on a CPU, interleaved rounds over one second per provider (2 calls each for
    --smoke), since stock's ATen loops on a 2-core CPU drift between two speed levels for
    minutes at a time, and a ratio of two times taken seconds apart could straddle them."""
    if device.type == "cuda" and not smoke:
        return {name: common.bench_ms(r.call, device, smoke, grad_to_none=r.leaves)
                for name, r in runs.items()}
    times = common.interleaved_cpu_times_ms(
        {name: r.call for name, r in runs.items()}, min_rounds=2 if smoke else 10,
        budget_s=0.0 if smoke else len(runs), block_s=0.0 if smoke else CPU_BLOCK_S,
        grad_to_none={name: r.leaves for name, r in runs.items()})
    return {name: statistics.median(t) for name, t in times.items()}


def measure(case: Case, providers: list[str], mode: str, smoke: bool, copy_gbps: float,
            device: torch.device) -> list[dict]:
    """One row per provider: its median time on ``case`` in ``mode``, timed alongside the
    others."""
    runs = {name: _run(case, name, mode) for name in providers if name in case.fns}
    rows = []
    for provider, ms in median_ms(runs, device, smoke).items():
        run = runs[provider]
        gbps = float("nan") if smoke else run.moved / ms / 1e6
        row = {"op": case.op, "variant": case.variant, "shape_from": case.label,
               "shape": "x".join(map(str, case.shape)), "layout": case.layout,
               "tensor_mb": case.megabytes,
               "dtype": str(run.dtype).replace("torch.", ""), "mode": mode,
               "provider": provider, "median_ms": ms, "gbps": gbps,
               "pct_copy_bw": 100 * gbps / copy_gbps if copy_gbps == copy_gbps else float("nan")}
        if mode == "fwd+bwd":
            for t in run.leaves:
                t.grad = None
            row["peak_mem_mb"] = common.peak_memory_mb(run.call, device)
        rows.append(row)
    return rows


def plot(rows: list[dict], out_dir) -> list:
    """Time and GB/s against tensor size, one line per provider, for each swept op/mode."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    paths = []
    sweeps = {(r["op"], r["variant"], r["mode"]) for r in rows if r["shape_from"] == "sweep"}
    for op, variant, mode in sorted(sweeps):
        fig, (ax_t, ax_bw) = plt.subplots(1, 2, figsize=(11, 4), dpi=110)
        for provider in PROVIDERS:
            pts = sorted((r["tensor_mb"], r["median_ms"], r["gbps"]) for r in rows
                         if (r["op"], r["variant"], r["mode"], r["provider"], r["shape_from"])
                         == (op, variant, mode, provider, "sweep"))
            if pts:
                mb, ms, bw = zip(*pts)
                ax_t.plot(mb, ms, marker="o", label=provider)
                ax_bw.plot(mb, bw, marker="o", label=provider)
        for ax, ylabel in ((ax_t, "median ms"), (ax_bw, "GB/s")):
            ax.set_xscale("log")
            ax.set_xlabel("input tensor MB")
            ax.set_ylabel(ylabel)
            ax.grid(alpha=0.3)
        ax_t.set_yscale("log")
        ax_bw.legend()
        fig.suptitle(f"{op} ({variant}), {mode}, {rows[0]['device']}")
        fig.tight_layout()
        name = f"kernels_{op}_{variant}_{mode}".replace("=", "-").replace(",", "_")
        path = out_dir / (name.replace("+", "_") + ".png")
        fig.savefig(path)
        plt.close(fig)
        paths.append(path)
    return paths


def add_speedups(rows: list[dict]) -> None:
    """``speedup_vs_<baseline>``: the baseline's time / this row's, for the same case and mode."""
    def key(r):
        return r["op"], r["variant"], r["shape_from"], r["shape"], r["layout"], r["mode"]
    times = {(key(r), r["provider"]): r["median_ms"] for r in rows}
    for row in rows:
        for base in BASELINES:
            if (key(row), base) in times:
                row[f"speedup_vs_{base}"] = times[(key(row), base)] / row["median_ms"]


TABLE = {"op": "op", "variant": "variant", "shape_from": "shape from", "shape": "shape",
         "layout": "layout",
         "median_ms": "ssgan ms", "speedup_vs_stock": "vs stock",
         "speedup_vs_stock+compile": "vs stock+compile"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.kernels", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_common_args(parser)
    parser.add_argument("--dtype", choices=DTYPES, default="fp32")
    parser.add_argument("--providers", nargs="+", choices=PROVIDERS, default=list(PROVIDERS))
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--ops", nargs="+", default=None,
                        help="only these ops (leaky_relu_dropout, gan_logits, "
                             "masked_cross_entropy, batch_norm_leaky_relu_dropout, "
                             "gan_loss_head, feature_matching)")
    args = parser.parse_args(argv)
    device, env, out_dir = common.setup(args)
    copy_gbps = common.copy_bandwidth_gbps(device, args.smoke)
    compile_backend = "aot_eager" if args.smoke else "inductor"
    rows = []
    for case in cases(DTYPES[args.dtype], device, args.smoke, compile_backend):
        if args.ops and case.op not in args.ops:
            continue
        for mode in args.modes:
            for row in measure(case, args.providers, mode, args.smoke, copy_gbps, device):
                rows.append({**row, "copy_gbps": copy_gbps, **env})
                print(f"{case.op:22s} {case.variant:22s} {row['shape']:>16s} "
                      f"{case.layout:14s} {mode:8s} {row['provider']:14s} "
                      f"{row['median_ms']:9.4f} ms {row['gbps']:8.1f} GB/s")
    add_speedups(rows)
    common.write_csv(rows, out_dir / "kernels.csv")
    summary = [r for r in rows if r["provider"] == "ssgan" and r["mode"] == "fwd+bwd"]
    (out_dir / "kernels.md").write_text(common.markdown_table(summary, TABLE))
    for path in plot(rows, out_dir):
        print(f"wrote {path}")
    common.write_readme(out_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
