"""Compiles the project's Triton kernels for real NVIDIA targets on a machine without a GPU.

The interpreter accepts code that the GPU compiler may reject, and it hides register pressure
and spills. This module closes that gap in two steps:

1. :func:`record_launches` records every Triton launch a piece of code makes (kernel, argument
   dtypes and alignment, integer values, compile-time constants), in the interpreter or on a
   GPU; ``dry=True`` records without executing, so a full-size model step costs milliseconds.
2. :func:`compile_launches` turns the launches into Triton's own specializations (its binder,
   for the target's backend), compiles each distinct one with ``triton.compile(ASTSource(...),
   target=GPUTarget("cuda", arch, 32))`` in a process without ``TRITON_INTERPRET``, and reads
   the cubin with the ``cuobjdump`` that ships in the triton wheel: registers, local memory
   (spills), shared memory and the SASS instruction count.

``python -m bench.gpu_compile LAUNCHES.json --out RESULTS.json`` is the compiling half.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

from ssgan.kernels import _private_api as private


def _kernel_modules() -> tuple[str, ...]:
    """Every op's Triton module: ``kernels/_triton_<op>.py``, one per op."""
    import ssgan.kernels
    folder = Path(ssgan.kernels.__file__).parent
    return tuple(f"ssgan.kernels.{path.stem}" for path in sorted(folder.glob("_triton_*.py")))


KERNEL_MODULES = _kernel_modules()
ARCHS = (80, 90)   # A100, H100


def _launchable_kernels() -> dict[str, object]:
    """'module:name' -> the Triton kernel object (JITFunction, or InterpretedFunction under
    ``TRITON_INTERPRET=1``) of every kernel the ops launch."""
    import importlib
    found = {}
    for module_name in KERNEL_MODULES:
        module = importlib.import_module(module_name)
        for name, obj in vars(module).items():
            if name.endswith("_kernel") and hasattr(obj, "run"):
                found[f"{module_name}:{name}"] = obj
    return found


def _describe(value: object) -> list:
    """A JSON-able description of a launch argument, enough to rebuild an equivalent one."""
    if isinstance(value, torch.Tensor):
        return ["tensor", str(value.dtype).removeprefix("torch."), value.data_ptr() % 16 == 0,
                value.numel()]
    if isinstance(value, bool):
        return ["bool", value]
    if isinstance(value, int):
        return ["int", value]
    if isinstance(value, float):
        return ["float", value]
    if value is None:
        return ["none"]
    if isinstance(value, tuple):   # a kernel taking a tuple of tensors (or of ints)
        return ["tuple", [_describe(v) for v in value]]
    raise TypeError(f"cannot describe a launch argument of type {type(value).__name__}")


def tensor_descriptions(descs: list) -> Iterator[list]:
    """The tensor descriptions among recorded arguments, tuples' included."""
    for d in descs:
        if d[0] == "tuple":
            yield from tensor_descriptions(d[1])
        elif d[0] == "tensor":
            yield d


@contextlib.contextmanager
def record_launches(dry: bool = False, into: list[dict] | None = None) -> Iterator[list[dict]]:
    """Records every kernel launch in the block as ``{"kernel", "args", "kwargs", "grid"}``,
    appended to ``into`` (a new list by default), which the block gets.

    ``dry``: record without running the kernel (outputs keep whatever memory they had), which
    records a full-size model step in the interpreter in milliseconds."""
    launches: list[dict] = [] if into is None else into

    def make_run(name, kernel, original):
        def run(*args, grid, warmup, **kwargs):
            launches.append({"kernel": name, "args": [_describe(a) for a in args],
                             "kwargs": {k: _describe(v) for k, v in kwargs.items()},
                             "grid": list(grid) if not callable(grid) else None})
            return None if dry else original(*args, grid=grid, warmup=warmup, **kwargs)
        return run
    with private.replaced_launches(_launchable_kernels(), make_run):
        yield launches


# ------------------------------------------------------------------ compiling (no interpreter)

def _rebuild(desc: list) -> object:
    """An argument equivalent to the recorded one for Triton's specialization: same dtype and
    16-byte alignment for tensors, the same value otherwise."""
    kind = desc[0]
    if kind == "tensor":
        dtype = getattr(torch, desc[1])
        base = torch.empty(64, dtype=dtype)
        return base if desc[2] else base[1:]   # offset by one element: not 16-byte aligned
    if kind == "tuple":
        return tuple(_rebuild(d) for d in desc[1])
    return None if kind == "none" else desc[1]


def _specialization(kernel, launch: dict, backend) -> tuple:
    """Triton's (signature, constexprs, attrs, options) for ``launch`` on ``backend``, from the
    same binder that ``JITFunction.run`` uses."""
    return private.launch_specialization(
        kernel, backend, [_rebuild(d) for d in launch["args"]],
        {k: _rebuild(d) for k, d in launch["kwargs"].items()})


def _tool(name: str) -> str:
    import triton
    return str(Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name)


def _cubin_facts(cubin: bytes, disassemble: bool = True) -> dict:
    """Registers, local memory (spills), static shared memory and, with ``disassemble``, SASS
    instructions (NOPs excluded) of a single-kernel cubin, read with cuobjdump. The
    disassembly takes most of a compile's time; the resource usage is almost free."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        dump = subprocess.run([_tool("cuobjdump"), "-res-usage",
                               *(["-sass"] if disassemble else []), f.name], check=True,
                              capture_output=True, text=True).stdout
    fields = dict(re.findall(r"(REG|STACK|SHARED|LOCAL):(\d+)", dump))
    facts = {"registers": int(fields.get("REG", 0)), "local_bytes": int(fields.get("LOCAL", 0)),
             "stack_bytes": int(fields.get("STACK", 0)),
             "static_shared_bytes": int(fields.get("SHARED", 0))}
    if disassemble:
        opcodes = re.findall(r"/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)", dump)
        facts["sass_instructions"] = sum(1 for op in opcodes if not op.startswith("NOP"))
    return facts


def _compile_one(job: tuple[str, int, dict, bool]) -> dict:
    name, arch, launch, disassemble = job
    kernel = _launchable_kernels()[name]
    options, signature, constexprs, attrs = _specialization(kernel, launch,
                                                            private.gpu_backend(arch))
    result = {"kernel": name, "arch": f"sm_{arch}",
              "constexprs": {kernel.params[path[0]].name: value
                             for path, value in constexprs.items()},
              "signature": {k: v for k, v in signature.items() if v != "constexpr"}}
    try:
        compiled = private.compile_for_gpu(kernel, signature, constexprs, arch, attrs,
                                           options.__dict__)
    except Exception as err:  # a compile error is a finding, reported with the launch
        return {**result, "error": f"{type(err).__name__}: {err}"[-2000:]}
    return {**result, **_cubin_facts(compiled.asm["cubin"], disassemble),
            "num_warps": compiled.metadata.num_warps, "shared_bytes": compiled.metadata.shared}


def specialization_key(name: str, launch: dict, structural: bool = False) -> tuple[str, str]:
    """Launches that differ only in integer values Triton does not specialize on compile to
    the same binary; this key (computed for sm_90) tells them apart: (the kernel with its
    signature and constants, its arguments' alignment).

    ``structural``: also ignore the values of float constants (slope, p, 1/(1-p)), which only
    change immediates in the same instruction stream (p == 0 is a separate flag). A launch
    that says ``"any_alignment": True`` stands for its kernel at every alignment (which
    arguments are 16-byte aligned or divisible by 16): its alignment is ``"any"``, and
    :func:`compile_distinct` compiles it at the alignment of another launch of the same
    specialization where there is one."""
    kernel = _launchable_kernels()[name]
    _, signature, constexprs, attrs = _specialization(kernel, launch, private.gpu_backend(90))
    if structural:
        constexprs = {k: "float" if isinstance(v, float) else v for k, v in constexprs.items()}
    alignment = "any" if launch.get("any_alignment") else repr(sorted(attrs.items()))
    return repr((name, sorted(signature.items()), sorted(constexprs.items()))), alignment


def compile_distinct(launches: list[dict], archs: tuple[int, ...] = ARCHS,
                     jobs: int = os.cpu_count() or 1, structural: bool = False) -> list[dict]:
    """Compiles each distinct specialization among ``launches`` once per arch (in this
    process, which must not run the interpreter). Each result carries ``elements`` (the
    largest element count among its launches), ``launches`` (how many it stands for) and
    ``sources`` (the launches' ``source`` tags); ``sass_instructions`` where one of its
    launches asks for them: ``"disassemble"`` is True (the default), False, or the archs to
    disassemble for (``[90]``). ``structural``: see :func:`specialization_key`."""
    groups: dict[tuple[str, str], list[dict]] = {}
    first_group: dict[str, tuple[str, str]] = {}  # a specialization -> its first group's key
    # the launches at a given alignment first, so that one standing for every alignment joins
    # one of their groups (sorted() is stable)
    for launch in sorted(launches, key=lambda launch: bool(launch.get("any_alignment"))):
        specialization, alignment = specialization_key(launch["kernel"], launch, structural)
        key = (first_group.get(specialization, (specialization, alignment))
               if alignment == "any" else (specialization, alignment))
        first_group.setdefault(specialization, key)
        groups.setdefault(key, []).append(launch)
    work = [(members[0]["kernel"], arch, members[0],
             any(_disassembles(m, arch) for m in members))
            for members in groups.values() for arch in archs]
    with ProcessPoolExecutor(max_workers=max(1, jobs)) as pool:
        results = list(pool.map(_compile_one, work))
    facts = {id(members[0]): (max(_elements(m) for m in members), len(members),
                              sorted({m.get("source", "") for m in members}))
             for members in groups.values()}
    for result, (_, _, launch, _) in zip(results, work):
        result["elements"], result["launches"], result["sources"] = facts[id(launch)]
    return results


def _disassembles(launch: dict, arch: int) -> bool:
    wanted = launch.get("disassemble", True)
    return arch in wanted if isinstance(wanted, list) else bool(wanted)


def _elements(launch: dict) -> int:
    """The size of the launch's largest tensor argument (elements)."""
    return max((d[3] for d in tensor_descriptions(launch["args"])), default=0)


def compile_launches(launches: list[dict], archs: tuple[int, ...] = ARCHS,
                     jobs: int = os.cpu_count() or 1, structural: bool = False) -> list[dict]:
    """:func:`compile_distinct` in a fresh process without ``TRITON_INTERPRET`` (the caller may
    be running the interpreter, whose kernels cannot be compiled)."""
    with tempfile.TemporaryDirectory() as tmp:
        src, out = Path(tmp) / "launches.json", Path(tmp) / "results.json"
        src.write_text(json.dumps(launches))
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        proc = subprocess.run([sys.executable, "-m", "bench.gpu_compile", str(src), "--out",
                               str(out), "--archs", *map(str, archs), "--jobs", str(jobs),
                               *(["--structural"] if structural else [])],
                              env=env, capture_output=True, text=True,
                              cwd=Path(__file__).resolve().parents[1])
        if proc.returncode:
            raise RuntimeError(f"bench.gpu_compile failed:\n{proc.stderr[-4000:]}")
        return json.loads(out.read_text())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("launches", help="JSON list written from record_launches")
    parser.add_argument("--out", required=True, help="where to write the JSON results")
    parser.add_argument("--archs", type=int, nargs="+", default=list(ARCHS))
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--structural", action="store_true",
                        help="compile one of the launches that differ only in float constants")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        parser.error("unset TRITON_INTERPRET: interpreted kernels cannot be compiled")
    launches = json.loads(Path(args.launches).read_text())
    Path(args.out).write_text(json.dumps(compile_distinct(launches, tuple(args.archs),
                                                          args.jobs, args.structural),
                                         indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
