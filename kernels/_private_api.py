"""Every private torch and triton API ssgan touches, in one place: the checklist for an upgrade.

torch and triton are pinned exactly (setup.py) because of this list. To move to a new release,
check each entry below against it, run the full test suite, and only then change the pins.

Runtime (the package):
- ``torch.fx.experimental.proxy_tensor.make_fx`` with ``tracing_mode="symbolic"`` and
  ``torch._inductor.decomposition.select_decomp_table``: trace a twin into an ATen graph.
- ``torch._inductor.compile_fx.compile_fx_inner`` and ``CompiledFxGraph.current_callable``:
  Inductor's own entry point and the generated module's call, without Dynamo's wrappers.
- ``torch._inductor.config.patch({"cpp.dynamic_threads": True})``: OpenMP loops whatever the
  sizes seen at tracing.
- ``torch._guards.TracingContext`` / ``tracing``: the FX-graph cache finds the shape
  environment there.
- ``ShapeEnv.evaluate_guards_for_args``: a compiled variant's shape guards against new inputs.
- ``torch._C._ForceDispatchKeyGuard``, ``torch._C._dispatch_tls_local_include_set`` /
  ``_exclude_set`` and ``torch.utils._python_dispatch._disable_current_modes``: compile in a
  clean dispatch state.
- ``torch._dynamo.exc.BackendCompilerFailed``: what a failed Inductor compilation raises.
- ``CustomOpDef._init_fn``: a custom op's Python body, called directly in eager mode.
- ``torch._assert_async``: the traced twins' target-range check, with no host read.
- ``torch._foreach_lerp_``: the weight average's one-launch update.
- ``torch._foreach_copy_``: a bf16 step's weight casts, one launch for all of a model's.
- ``torch._foreach_add_``: the step counts of the mixed-precision Adam, one launch, as
  PyTorch's Adam increments them.
- ``Tensor._version``: whether a parameter changed since the mixed-precision Adam last wrote
  its bf16 copy (an in-place op moves it; a Triton kernel's store does not).
- ``torch.nn.utils.stateless._reparametrize_module`` (what ``torch.func.functional_call``
  runs): a bf16 step's model calls see the bf16 weights in place of the fp32 parameters.
- ``torch._C._will_engine_execute_node``: whether the backward pass in progress runs a node (what
  ``torch.autograd.graph.register_multi_grad_hook`` asks), so that ``ssgan.conv_grads`` computes
  only the gradients that pass uses, as ATen's own backward functions do.
- ``torch._inductor.runtime.cache_dir_utils.cache_dir``: where Inductor caches, for the
  trainer's first-run message.

Benchmarks and tests only (nothing else in the repository names a private torch or triton
module: ``tests/test_private_api.py`` fails on one):
- ``torch._functorch.config.patch(donated_buffer=False)``: the stock+compile baseline
  (``bench.stock``) differentiates D's graph twice.
- ``triton.runtime.jit.create_function_from_signature``, ``JITFunction._pack_args`` and
  ``JITFunction.run``: ``bench.gpu_compile`` records every launch (``run`` replaced per kernel
  object; ``tests/conftest.py`` records each test session's) and rebuilds a launch's
  specialization for an ahead-of-time compile.
- ``triton.compiler.ASTSource``, ``triton.compiler.compiler.make_backend``: that compile,
  for ``bench.gpu_compile`` and ``tests/test_leaky_relu_dropout.py``.
- ``torch.utils._python_dispatch.TorchDispatchMode`` and ``torch.utils._pytree.tree_leaves``:
  ``bench.gpu_static`` and the tests of the op dispatch (``test_backend_and_compile``,
  ``test_inductor_path``, ``test_subpixel``) see every ATen call.
- ``torch._inductor.config`` (``cpp.simdlen``) and ``torch._inductor.cpu_vec_isa``:
  ``tests/test_vector_isa.py`` compiles the CPU path for every vector width.
- ``torch._dynamo.reset`` and ``torch._dynamo.utils.counters``: tests of ``torch.compile`` and
  of Inductor's cache (``tests/test_backend_and_compile.py``, ``tests/test_inductor_path.py``).
"""
from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator

import torch

# Lines torch logs on a CPU-only machine, or one without triton, when the imports below (or
# Inductor's compile) load these modules: they say nothing about the CPU path, and a newcomer
# reads them as something broken. (logger -> the start of the message dropped)
TORCH_NOTICES = {"torch.utils.cpp_extension": "No CUDA runtime is found",
                 "torch.utils.flop_counter": "triton not found"}


class _Drop(logging.Filter):
    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefix)


for _logger, _prefix in TORCH_NOTICES.items():
    logging.getLogger(_logger).addFilter(_Drop(_prefix))

# Files that name a private module themselves, and why (the boundary test skips only these).
LISTED_USES = {
    "tests/test_runs_anywhere.py": "simulates another torch: torch._inductor.compile_fx missing, "
                                   "and its compile_fx_inner with another signature",
}

PINNED_TORCH = "2.14.1"  # the release every entry above was checked against (setup.py's pin)


def pinned_torch() -> bool:
    """Whether this is the torch release the checklist was checked against."""
    return torch.__version__.split("+")[0] == PINNED_TORCH


# the dispatcher's thread-local key sets outside any op: a custom op's body, reached through
# the dispatcher (opcheck, a dispatch mode), runs with the tracing keys excluded
_DEFAULT_KEY_SETS = (torch._C._dispatch_tls_local_include_set(),
                     torch._C._dispatch_tls_local_exclude_set())
_ForceDispatchKeyGuard = torch._C._ForceDispatchKeyGuard

# The compiler's names below are imported on first use (module ``__getattr__``), not with the
# package: importing them costs longer than torch itself, which a run on the eager twins or
# Triton, the CLI's ``--help`` and every worker process would pay for nothing.
_COMPILER_NAMES = {"BackendCompilerFailed", "make_fx", "TracingContext", "tracing",
                   "inductor_config", "compile_fx_inner", "select_decomp_table",
                   "TorchDispatchMode", "_disable_current_modes", "tree_leaves", "unavailable"}


def _load_compiler() -> None:
    """Imports the compiler's names into this module. On another torch a name may be gone or
    changed: ``unavailable`` then says which, and only the compiled CPU path
    (``ssgan.kernels._inductor``) turns itself off; the eager twins and the Triton GPU path
    never need these."""
    if "unavailable" in globals():
        return
    try:
        from torch._dynamo.exc import BackendCompilerFailed
        from torch.fx.experimental.proxy_tensor import make_fx
        from torch._guards import TracingContext, tracing
        from torch._inductor import config as inductor_config
        from torch._inductor.compile_fx import compile_fx_inner
        from torch._inductor.decomposition import select_decomp_table
        from torch.utils._python_dispatch import TorchDispatchMode, _disable_current_modes
        from torch.utils._pytree import tree_leaves
        unavailable = None
        globals().update({n: v for n, v in locals().items() if n in _COMPILER_NAMES})
    except (ImportError, AttributeError) as err:
        class BackendCompilerFailed(Exception):  # noqa: F811
            """Stands in for torch's, which this torch lacks; nothing raises it."""
        globals().update(BackendCompilerFailed=BackendCompilerFailed,
                         unavailable=f"{type(err).__name__}: {err}")


def __getattr__(name: str):
    if name in _COMPILER_NAMES:
        _load_compiler()
        if name in globals():
            return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["BackendCompilerFailed", "TorchDispatchMode", "assert_async", "clean_dispatch_state",
           "compile_for_gpu", "compile_graph", "custom_op_body", "dynamo_reset",
           "foreach_copy_", "foreach_lerp_", "gpu_backend", "guards_hold", "inductor_cache_dir",
           "inductor_config", "inductor_counters", "launch_specialization", "make_fx",
           "no_buffer_donation", "replaced_launches", "select_decomp_table",
           "tensors_swapped_in", "tree_leaves", "vector_isa_widths", "foreach_add_",
           "version_of", "will_engine_execute"]


def _lerp_each_(targets: list, ends: list, weight: float) -> None:
    for target, end in zip(targets, ends):
        target.lerp_(end, weight)


def _copy_each_(targets: list, sources: list) -> None:
    for target, source in zip(targets, sources):
        target.copy_(source)


def _add_each_(targets: list, value: float) -> None:
    for target in targets:
        target.add_(value)


def version_of(t: torch.Tensor) -> int:
    """``t``'s version counter: it moves with every in-place ATen op on t."""
    return t._version


def will_engine_execute(node) -> bool:
    """Whether the backward pass in progress runs ``node`` (an autograd node, or an input's
    gradient accumulator): False for a gradient that ``torch.autograd.grad`` was not asked
    for, nor needs on the way to one. Call it inside a backward function."""
    return torch._C._will_engine_execute_node(node)


def _no_async_assert(condition: torch.Tensor, message: str) -> None:
    """Where this torch has no device-side assert, the traced check is skipped."""


assert_async = getattr(torch, "_assert_async", _no_async_assert)
foreach_lerp_ = getattr(torch, "_foreach_lerp_", _lerp_each_)  # one launch for all tensors
foreach_copy_ = getattr(torch, "_foreach_copy_", _copy_each_)  # one launch for all tensors
foreach_add_ = getattr(torch, "_foreach_add_", _add_each_)  # one launch for all tensors


def tensors_swapped_in(module: torch.nn.Module, tensors: dict[str, torch.Tensor]
                       ) -> contextlib.AbstractContextManager:
    """Within the block, ``module``'s parameters named in ``tensors`` (qualified names) are
    those tensors, as ``torch.func.functional_call`` sees them, for any method of it."""
    from torch.nn.utils.stateless import _reparametrize_module
    return _reparametrize_module(module, tensors)


@contextlib.contextmanager
def clean_dispatch_state() -> Iterator[None]:
    """Tracing sees neither the dispatch state of the op being run nor a dispatch mode the
    op runs under (opcheck's, a profiler's), and no autograd."""
    _load_compiler()
    with _ForceDispatchKeyGuard(*_DEFAULT_KEY_SETS), _disable_current_modes(), \
            torch.no_grad():
        yield


def compile_graph(graph: torch.fx.GraphModule, placeholders: list, fake_mode) -> Callable:
    """Inductor's compiled callable for an ATen ``graph`` traced with symbolic sizes, taking a
    list of tensors. Every loop nest gets an OpenMP region whatever the sizes at tracing
    (otherwise a graph traced on a few rows, and cached on disk, would run any size on one
    thread)."""
    _load_compiler()
    with tracing(TracingContext(fake_mode)), inductor_config.patch(
            {"cpp.dynamic_threads": True}):
        compiled = compile_fx_inner(graph, placeholders)
    # CompiledFxGraph.__call__ around it only manages GPU autotuning caches
    return compiled.current_callable


def guards_hold(shape_env, placeholders: list, tensors: list[torch.Tensor]) -> bool:
    """Whether a traced graph's shape guards (static sizes included) hold for ``tensors``."""
    return shape_env.evaluate_guards_for_args(placeholders, tensors, ignore_static=False)


def custom_op_body(op) -> Callable:
    """The Python function a ``torch.library.custom_op`` was defined from (the op itself when
    that attribute is gone), to call without the dispatcher."""
    return getattr(op, "_init_fn", op)


def inductor_cache_dir() -> str:
    """Where Inductor keeps compiled kernels between runs (``TORCHINDUCTOR_CACHE_DIR``)."""
    try:
        from torch._inductor.runtime.cache_dir_utils import cache_dir
        return cache_dir()
    except (ImportError, AttributeError):
        return "Inductor's cache directory"


def no_buffer_donation():
    """A context in which AOTAutograd does not donate buffers, which a graph differentiated
    twice (``retain_graph=True``) needs; it applies to what compiles inside it."""
    import torch._functorch.config
    return torch._functorch.config.patch(donated_buffer=False)


def dynamo_reset() -> None:
    """Forgets everything ``torch.compile`` compiled in this process."""
    import torch._dynamo
    torch._dynamo.reset()


def inductor_counters() -> dict:
    """Inductor's event counters (``fxgraph_cache_hit``, ``fxgraph_cache_miss``, ...)."""
    from torch._dynamo.utils import counters
    return counters["inductor"]


def vector_isa_widths() -> tuple[set[int], int]:
    """(the bit widths of every vector ISA this CPU can run, the width Inductor picks)."""
    from torch._inductor.cpu_vec_isa import pick_vec_isa, valid_vec_isa_list
    return {isa.bit_width() for isa in valid_vec_isa_list()}, pick_vec_isa().bit_width()


# ---------------------------------------------------------------- triton (bench.gpu_compile)

@contextlib.contextmanager
def replaced_launches(kernels: dict, make_run: Callable) -> Iterator[None]:
    """Within the block, a launch of each kernel (name -> JITFunction or InterpretedFunction)
    calls ``make_run(name, kernel, original)`` 's result instead of ``kernel.run``;
    ``original(*args, **kwargs)`` launches as Triton would."""
    saved = {name: kernel.__dict__.get("run") for name, kernel in kernels.items()}
    for name, kernel in kernels.items():
        def original(*args, _kernel=kernel, **kwargs):
            return type(_kernel).run(_kernel, *args, **kwargs)
        kernel.run = make_run(name, kernel, original)
    try:
        yield
    finally:
        for name, kernel in kernels.items():
            if saved[name] is None:
                kernel.__dict__.pop("run", None)
            else:
                kernel.run = saved[name]


def gpu_backend(arch: int):
    """Triton's compiler backend for an NVIDIA GPU of compute capability ``arch`` (80, 90)."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler.compiler import make_backend
    return make_backend(GPUTarget("cuda", arch, 32))


def launch_specialization(kernel, backend, args: list, kwargs: dict) -> tuple:
    """Triton's (options, signature, constexprs, attrs) for launching ``kernel`` with
    ``args``/``kwargs`` on ``backend``, from the binder ``JITFunction.run`` uses."""
    from triton.runtime.jit import create_function_from_signature
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    bound_args, specialization, options = binder(*args, **kwargs)
    return kernel._pack_args(backend, kwargs, bound_args, specialization, options)


def compile_for_gpu(kernel, signature: dict, constexprs: dict, arch: int,
                    attrs: dict | None = None, options: dict | None = None):
    """``triton.compile`` of ``kernel`` for an NVIDIA GPU of compute capability ``arch``,
    ahead of time (no GPU needed): the compiled kernel, whose ``asm`` holds ttir ... cubin."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    source = ASTSource(kernel, signature, constexprs, attrs) if attrs is not None \
        else ASTSource(kernel, signature, constexprs)
    return triton.compile(source, target=GPUTarget("cuda", arch, 32), options=options)
