"""The GPU path, on paper: a static performance model of the Triton kernels. NOT a measurement.

Every kernel specialization that a training step (the notebook's SVHN step and the improved
MNIST step, batch 128, the GPU's channels-first layout) and ``bench.kernels`` (fp32, bf16,
fp16; bf16 in channels-last too) launch is recorded in Triton's interpreter without running
it, compiled for sm_90 and sm_80 on this CPU (``bench.gpu_compile``), and read back from the
cubin: registers, spills, shared memory, SASS instructions. From those it estimates, per
specialization:

- SASS instructions per element: static instructions per thread / elements per thread (for the
  row kernels, per element of one (rows x columns) tile: their column loop makes the dynamic
  count larger for wide rows);
- theoretical occupancy from registers, warps and shared memory;
- an H100 time at the model's shapes and at 256 MB: the larger of bytes / bandwidth and
  instructions / issue rate, plus a launch floor.

For one training step of each recipe it counts kernel launches and HBM bytes on the fused path
and on the stock-PyTorch path (``bench/stock.py``), on the CPU: a ``TorchDispatchMode`` sees
every ATen op (views and allocations launch nothing; every other op counts as one launch that
reads its inputs and writes its outputs once), and every Triton launch counts as one launch
moving the bytes its kernel must move.

Output: ``gpu_static.csv`` (every specialization, both archs), ``gpu_static_step.csv``,
``gpu_static.md`` and ``gpu_static.png`` under ``bench/results/static/``.

    python -m bench.gpu_static            # about a minute on 2 cores
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import json
import math
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import torch

# the model assumes this hardware; every figure below depends on it
H100 = {"name": "H100 SXM5 (spec sheet)", "hbm_bytes_per_s": 3.35e12,
        "thread_instructions_per_s": 132 * 4 * 32 * 1.755e9,  # SMs x schedulers x lanes x clock
        "launch_floor_s": 3e-6, "max_warps_per_sm": 64, "registers_per_sm": 65536,
        "shared_bytes_per_sm": 228 * 1024, "max_blocks_per_sm": 32}
LARGE_BYTES = 256 * 2**20
OUT = Path("bench") / "results" / "static"


def _interpreter() -> None:
    """Recording needs the interpreter (no GPU here); it must be chosen before the kernels are
    imported."""
    os.environ["TRITON_INTERPRET"] = "1"


# ------------------------------------------------------------------ recording

def _recording_device() -> str:
    """The interpreter records CPU tensors; without it (a GPU machine) Triton serves CUDA ones."""
    from ssgan.kernels._backend import INTERPRET
    return "cpu" if INTERPRET else "cuda"


@contextlib.contextmanager
def _as_on_the_gpu() -> Iterator[None]:
    """A GPU's decisions and bf16 support while its step is recorded here: the recording counts
    launches, so a CPU without native bf16, where ``ssgan train`` refuses bf16 as slower than
    fp32, records the same step (emulated)."""
    from ssgan import precision
    from ssgan.devices import decisions_of
    with decisions_of("cuda"), mock.patch.object(precision, "missing_bf16_support",
                                                 lambda device: None):
        yield


def model_step_launches(recipe: str, batch: int = 128, precision: str = "fp32") -> list[dict]:
    """Launches of one training step of ``recipe`` at its real shapes and ``precision``,
    recorded dry, with the decisions the trainer takes on a GPU
    (``ssgan.devices.POLICIES["cuda"]``: its bf16 step runs channels-last)."""
    import ssgan.kernels as K
    import ssgan.train as T
    from bench.gpu_compile import record_launches
    from bench.train_step import synthetic_svhn
    from ssgan.data import Dataset, Split

    cfg = T.config_for(recipe, batch_size=batch, device=_recording_device(), kernels="triton",
                       progress=False, out_dir="/nonexistent", precision=precision)
    if cfg.dataset == "mnist":
        g = torch.Generator().manual_seed(0)
        data = Dataset(Split(torch.randint(0, 256, (4 * batch, 1, 32, 32), dtype=torch.uint8,
                                           generator=g), torch.arange(4 * batch) % 10), None, 10)
    else:
        data = synthetic_svhn(max(4 * batch, cfg.labels))
    with _as_on_the_gpu():
        trainer = T.Trainer(cfg, data)
        idx = torch.arange(batch, device=trainer.device)
        with K.deferred_target_checks(), record_launches(dry=True) as launches:
            trainer.step(idx)
    for launch in launches:
        launch["source"] = f"model:{recipe}" + ("" if precision == "fp32" else f":{precision}")
    return launches


def bench_kernel_launches() -> list[dict]:
    """Launches of ``bench.kernels``' ssgan provider (forward and backward) for every case and
    dtype it runs, recorded dry."""
    from bench import kernels as bench_kernels
    from bench.gpu_compile import record_launches
    import ssgan.kernels as K
    device = torch.device(_recording_device())
    launches: list[dict] = []
    for dtype in bench_kernels.DTYPES.values():
        # channels-first, as the trainer's fp32 models run on a GPU; bf16 in channels-last too
        # (DevicePolicy.bf16_memory_format), as the model calls the op there: after ATen's
        # batch norm, never with a folded one's scale and shift (the recording device is the
        # CPU under the interpreter)
        for case in bench_kernels.cases(dtype, device, smoke=False, compile_backend="eager",
                                        channels_last_rows=dtype == torch.bfloat16):
            if case.layout == "channels_last" and "affine=True" in case.variant:
                continue
            inputs = case.make()
            with K.use_backend("triton"), K.deferred_target_checks(), \
                    record_launches(dry=True) as recorded:
                out = case.fns["ssgan"](*inputs)
                out.backward(torch.ones_like(out))
            launches += [{**launch, "source": f"bench.kernels:{case.label}"}
                         for launch in recorded]
    return launches


# ------------------------------------------------------------------ the model

def kernel_kind(result: dict) -> str:
    module, name = result["kernel"].rsplit(".", 1)[-1].split(":")
    return f"{module.removeprefix('_triton_')}.{name.strip('_').removesuffix('_kernel')}"


DTYPE_BYTES = {"fp64": 8, "fp32": 4, "fp16": 2, "bf16": 2}


def _pointer_types(types) -> list[str]:
    """The pointer types in a signature's values, tuples' included, in order."""
    out = []
    for t in types:
        if isinstance(t, (list, tuple)):
            out += _pointer_types(t)
        elif isinstance(t, str) and t.startswith("*"):
            out.append(t)
    return out


def main_dtype(result: dict) -> str:
    """The dtype of the kernel's main input (``x_ptr``, else its first pointer), e.g. 'fp32'."""
    signature = result["signature"]
    return signature.get("x_ptr", _pointer_types(signature.values())[0])[1:]


def element_bytes(result: dict) -> float:
    """HBM bytes the kernel must move per element of its main tensor (reads + writes)."""
    size = DTYPE_BYTES.get(main_dtype(result), 4)
    per_element = {"leaky_relu_dropout.forward": 2, "leaky_relu_dropout.backward": 3,
                   # the statistics read x twice (mean, then centred squares)
                   "batch_norm_leaky_relu_dropout.statistics": 2,
                   "batch_norm_leaky_relu_dropout.forward": 2,
                   "batch_norm_leaky_relu_dropout.reduction": 2,
                   "batch_norm_leaky_relu_dropout.backward": 3,
                   "gan_loss_head.forward": 1, "gan_loss_head.backward": 2,
                   "feature_matching.forward": 1, "feature_matching.backward": 1,
                   "gan_logits.forward": 1, "gan_logits.backward": 2,
                   "masked_cross_entropy.forward": 1, "masked_cross_entropy.backward": 2,
                   # a bf16 gradient and copy, the fp32 weight and two moments read and written
                   "mixed_precision_adam.adam": 7}
    if kernel_kind(result) == "masked_cross_entropy.finish":
        return 12.0   # a partial loss, weight and first-bad row per program
    return per_element[kernel_kind(result)] * size


def elements_per_program(result: dict) -> int:
    c = result["constexprs"]
    if "BLOCK_A" in c:
        return c["BLOCK_A"] * c["BLOCK_B"]
    if "BLOCK_R" in c:   # row loops: one (rows x columns) tile
        return c["BLOCK_R"] * c.get("BLOCK_C", c.get("BLOCK_K", 1))
    for columns in ("BLOCK_C", "BLOCK_K"):   # row kernels: rows x one column block
        if columns in c:
            return c["BLOCK_B"] * c[columns]
    return c.get("BLOCK", 1)


def occupancy(result: dict, hw: dict = H100) -> float:
    """Theoretical occupancy: resident warps / the SM's maximum, limited by registers (allocated
    per warp in 256-register units), warps and shared memory."""
    warps = result["num_warps"]
    regs_per_warp = math.ceil(max(1, result["registers"]) * 32 / 256) * 256
    blocks = min(hw["max_blocks_per_sm"], hw["max_warps_per_sm"] // warps,
                 (hw["registers_per_sm"] // regs_per_warp) // warps)
    if result["shared_bytes"]:
        blocks = min(blocks, hw["shared_bytes_per_sm"] // result["shared_bytes"])
    return blocks * warps / hw["max_warps_per_sm"]


def estimate_s(instructions_per_element: float, bytes_per_element: float, elements: int,
               hw: dict = H100) -> tuple[float, str]:
    """max(bytes / bandwidth, instructions / issue rate) + launch floor, and which bound."""
    memory = elements * bytes_per_element / hw["hbm_bytes_per_s"]
    issue = elements * instructions_per_element / hw["thread_instructions_per_s"]
    return max(memory, issue) + hw["launch_floor_s"], "memory" if memory >= issue else "issue"


def annotate(result: dict) -> dict:
    """Adds the model's columns to one compiled specialization (its op and dtype alone where it
    was not disassembled)."""
    if "error" in result:
        return result
    if "sass_instructions" not in result:
        return {**result, "op": kernel_kind(result), "dtype": main_dtype(result)}
    threads = result["num_warps"] * 32
    # a multi-tensor kernel holds one branch per tensor and each program runs one of them
    branches = result["constexprs"].get("TENSORS", 1)
    per_element = result["sass_instructions"] / branches / max(
        1.0, elements_per_program(result) / threads)
    bpe = element_bytes(result)
    large = LARGE_BYTES // DTYPE_BYTES.get(main_dtype(result), 4)
    t_model, bound_model = estimate_s(per_element, bpe, result["elements"])
    t_large, bound_large = estimate_s(per_element, bpe, large)
    return {**result, "op": kernel_kind(result),
            "dtype": main_dtype(result),
            "instructions_per_element": round(per_element, 2), "bytes_per_element": bpe,
            "occupancy": round(occupancy(result), 3),
            "model_us": round(t_model * 1e6, 2), "model_bound": bound_model,
            "large_elements": large, "large_us": round(t_large * 1e6, 1),
            "large_bound": bound_large,
            "large_gbps": round(large * bpe / t_large / 1e9, 1)}


# ------------------------------------------------------------------ one step: launches, bytes

# ops that launch nothing: allocations, views, and the profiler's markers around an optimizer step
NO_KERNEL = {"empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided",
             "lift_fresh", "_local_scalar_dense", "detach", "alias", "set_", "resize_",
             "_record_function_enter_new", "_record_function_exit"}


class StepCounter:
    """A ``TorchDispatchMode`` that counts the ATen ops that launch a kernel, and their bytes."""

    def __init__(self) -> None:
        from ssgan.kernels._private_api import TorchDispatchMode
        counter = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                counter.see(func, args, kwargs or {}, out)
                return out
        self.mode = Mode()
        self.launches = 0
        self.bytes = 0
        self.ops: dict[str, int] = {}

    def see(self, func, args, kwargs, out) -> None:
        name = func.__name__.split(".")[0]
        if func.namespace == "ssgan" or name in NO_KERNEL or getattr(func, "is_view", False):
            return   # the custom ops' Triton launches are counted from the recording
        from ssgan.kernels._private_api import tree_leaves
        tensors = [t for t in tree_leaves((args, kwargs, out))
                   if isinstance(t, torch.Tensor)]
        self.launches += 1
        self.bytes += sum(t.numel() * t.element_size() for t in tensors)
        self.ops[name] = self.ops.get(name, 0) + 1


def _users_gpu_optimizers(trainer) -> None:
    """Adam as a user's stock step runs it on a GPU: PyTorch's default there, foreach."""
    cfg = trainer.cfg
    for name, model in (("opt_d", trainer.d), ("opt_g", trainer.g)):
        setattr(trainer, name, torch.optim.Adam(model.parameters(), lr=cfg.lr,
                                                betas=(cfg.beta1, 0.999), foreach=True))


RECIPES = ("notebook", "improved")
# CI's bar (tests/test_gpu_static.py): the fused step's launches as a share of stock's
MAX_LAUNCH_SHARE = 0.7
# ... and what the bf16 step may launch beyond the fp32 step: nothing (a GPU's Adam reads the
# bf16 gradients and writes the bf16 weight copies itself)
BF16_EXTRA_LAUNCHES = 0


PATHS = ("fused (ssgan)", "fused (ssgan) bf16", "stock PyTorch", "stock PyTorch bf16")


def step_traffic(batch: int = 128) -> list[dict]:
    """Kernel launches and HBM bytes of one training step of each recipe, fused vs stock, in
    fp32 and in bf16 (stock's: its forward under ``torch.autocast``), each with the decisions a
    GPU takes (``ssgan.devices.POLICIES["cuda"]``: one D pass, the fused batch norm,
    channels-last in bf16). The fused step is the trainer's graph-ready step, which a GPU
    replays from one CUDA graph: its launches are the graph's nodes; the stock step runs
    PyTorch's default (foreach) Adam."""
    rows = []
    for recipe in RECIPES:
        for path in PATHS:
            with _as_on_the_gpu():
                rows.append(_path_traffic(path, batch, recipe))
    return rows


def _path_traffic(path: str, batch: int, recipe: str) -> dict:
    """One path's launches and bytes in one step (Adam's state created outside the count).
    A foreach or fused optimizer op counts as one launch, as every other ATen op does."""
    import ssgan.kernels as K
    from bench import stock
    from bench.gpu_compile import record_launches
    from bench.train_step import make_trainer

    precision = "bf16" if path.endswith("bf16") else "fp32"
    trainer = make_trainer("ssgan+bf16" if precision == "bf16" else "ssgan", batch,
                           smoke=False, device=torch.device("cpu"), recipe=recipe,
                           kernels="triton")
    counter = StepCounter()
    if path.startswith("stock"):
        g, d = stock.stock_models(trainer)
        _users_gpu_optimizers(trainer)
        stock.stock_step(trainer, g, d, trainer.batch_idx, precision)
        with counter.mode:
            stock.stock_step(trainer, g, d, trainer.batch_idx, precision)
        launches = []
    else:
        with K.deferred_target_checks():
            with record_launches(dry=True):
                trainer.graph_ready_step()
            with record_launches(dry=True) as launches, counter.mode:
                trainer.graph_ready_step()
    total = counter.launches + len(launches)
    return {"recipe": recipe, "path": path, "aten_launches": counter.launches,
            "triton_launches": len(launches), "launches": total,
            "hbm_mb": round((counter.bytes + sum(map(_launch_bytes, launches))) / 2**20, 1),
            "launch_floor_us": round(total * H100["launch_floor_s"] * 1e6, 1),
            "top_ops": json.dumps(dict(sorted(counter.ops.items(), key=lambda kv: -kv[1])[:8]))}


def _launch_bytes(launch: dict) -> int:
    """A Triton launch's bytes: its tensor arguments, each read or written once (the scalars
    and per-channel vectors are small)."""
    sizes = {"float64": 8, "float32": 4, "float16": 2, "bfloat16": 2, "int64": 8, "int32": 4,
             "bool": 1}
    from bench.gpu_compile import tensor_descriptions
    return sum(d[3] * sizes.get(d[1], 4) for d in tensor_descriptions(launch["args"]))


# ------------------------------------------------------------------ report

COLUMNS = ["op", "dtype", "arch", "flags", "registers", "local_bytes", "shared_bytes",
           "num_warps", "sass_instructions", "elements_per_program",
           "instructions_per_element", "occupancy", "bytes_per_element", "elements",
           "model_us", "model_bound", "large_us", "large_bound", "large_gbps", "launches"]
FLAG_NAMES = ("HAS_DROPOUT", "SHARED_PHILOX", "CHANNELS_LAST", "SWAPPED", "HAS_SCALE",
              "AFFINE_GRADS", "EXTRA_CLASS", "IS_FP64")


def flags(result: dict) -> str:
    c = result["constexprs"]
    on = [k.lower() for k in FLAG_NAMES if c.get(k) is True]
    blocks = "x".join(str(c[k]) for k in ("BLOCK_A", "BLOCK_B", "BLOCK_R", "BLOCK_C", "BLOCK_K",
                                          "BLOCK")
                      if k in c)
    p = f"p={c['P']}" if c.get("HAS_DROPOUT") else ""
    return " ".join(filter(None, [*on, p, f"block {blocks}"]))


def write_report(results: list[dict], step_rows: list[dict], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    rows = [{**r, "flags": flags(r), "elements_per_program": elements_per_program(r)}
            for r in results if "error" not in r]
    rows.sort(key=lambda r: (r["op"], r["dtype"], r["flags"], r["arch"]))
    with open(out / "gpu_static.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    with open(out / "gpu_static_step.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(step_rows[0]))
        writer.writeheader()
        writer.writerows(step_rows)
    (out / "gpu_static.md").write_text(markdown(rows, step_rows))
    plot(rows, out / "gpu_static.png")


def markdown(rows: list[dict], step_rows: list[dict]) -> str:
    head = ("A STATIC MODEL, NOT A MEASUREMENT: kernels compiled for sm_90 on a CPU, read from "
            f"the cubin; times assume an {H100['name']}: "
            f"{H100['hbm_bytes_per_s'] / 1e12:.2f} TB/s HBM, "
            f"{H100['thread_instructions_per_s']:.2e} thread-instructions/s, "
            f"{H100['launch_floor_s'] * 1e6:.0f} us launch floor.\n\n")
    lines = ["| op | dtype | flags | regs | spills (B) | instr/elem | occupancy | B/elem | "
             "model shape: elems, est. us | 256 MB: est. us, GB/s, bound |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        if r["arch"] != "sm_90":
            continue
        lines.append(f"| {r['op']} | {r['dtype']} | {r['flags']} | {r['registers']} | "
                     f"{r['local_bytes']} | {r['instructions_per_element']} | "
                     f"{r['occupancy']:.0%} | {r['bytes_per_element']:g} | "
                     f"{r['elements']:,}, {r['model_us']} | {r['large_us']}, "
                     f"{r['large_gbps']}, {r['large_bound']} |")
    step = ["", "One training step per recipe (batch 128; the notebook's on SVHN shapes, the "
            "improved one on MNIST's), with a GPU's decisions, counted on the CPU:", "",
            "| recipe | path | launches (ATen + Triton) | share of stock fp32 | HBM MB (model) | "
            "launch floor, us |", "| --- | --- | ---: | ---: | ---: | ---: |"]
    stock_launches = {r["recipe"]: r["launches"] for r in step_rows
                      if r["path"] == "stock PyTorch"}
    step += [f"| {r['recipe']} | {r['path']} | {r['launches']} ({r['aten_launches']} + "
             f"{r['triton_launches']}) | {r['launches'] / stock_launches[r['recipe']]:.2f} | "
             f"{r['hbm_mb']} | {r['launch_floor_us']} |" for r in step_rows]
    return head + "\n".join(lines + step) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    lrd = [r for r in rows if r["arch"] == "sm_90" and r["op"].startswith("leaky")
           and r["dtype"] in ("fp32", "bf16")]
    fig, ax = plt.subplots(figsize=(10, 4.5))
    labels = [f"{r['op'].split('.')[1]} {r['dtype']} {r['flags']}" for r in lrd]
    ax.barh(range(len(lrd)), [r["instructions_per_element"] for r in lrd], color=[
        "tab:red" if r["constexprs"].get("HAS_DROPOUT") else "tab:blue" for r in lrd])
    per_byte = H100["thread_instructions_per_s"] / H100["hbm_bytes_per_s"]
    for i, (bpe, label) in enumerate(((8, "fp32 forward"), (4, "bf16 forward"))):
        ax.axvline(per_byte * bpe, ls=":", color="gray")
        ax.text(per_byte * bpe, len(lrd) * (0.3 + 0.4 * i),
                f" {label}:\n memory-bound\n below this", fontsize=7, color="gray")
    ax.set_yticks(range(len(lrd)), labels, fontsize=6)
    ax.set_xlabel("SASS instructions per element (sm_90, static)")
    ax.set_title("leaky_relu_dropout specializations (red: dropout). STATIC MODEL, not measured")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(OUT), help=f"output folder (default: {OUT})")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args(argv)
    _interpreter()
    from bench.gpu_compile import compile_launches
    launches = [launch for recipe in RECIPES for precision in ("fp32", "bf16")
                for launch in model_step_launches(recipe, precision=precision)]
    launches += bench_kernel_launches()
    results = [annotate(r) for r in compile_launches(launches, jobs=args.jobs)]
    errors = [r for r in results if "error" in r]
    for r in errors:
        print(f"COMPILE ERROR {r['kernel']} {r['arch']}: {r['error']}", file=sys.stderr)
    step_rows = step_traffic()
    write_report(results, step_rows, Path(args.out))
    from bench.common import write_readme
    write_readme(Path(args.out))
    print((Path(args.out) / "gpu_static.md").read_text())
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
