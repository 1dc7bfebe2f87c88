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
- ``torch._inductor.runtime.cache_dir_utils.cache_dir``: where Inductor caches, for the
  trainer's first-run message.

Benchmarks and tests only:
- ``torch._functorch.config.patch(donated_buffer=False)``: the stock+compile baseline
  differentiates D's graph twice.
- ``triton.runtime.jit.create_function_from_signature`` and ``JITFunction._pack_args``:
  ``bench.gpu_compile`` rebuilds a launch's specialization for an ahead-of-time compile.
- ``torch._inductor.cpu_vec_isa`` and ``torch._dynamo.utils.counters``: tests of the CPU path.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch._dynamo.exc import BackendCompilerFailed
from torch._guards import TracingContext, tracing
from torch._inductor import config as inductor_config
from torch._inductor.compile_fx import compile_fx_inner
from torch._inductor.decomposition import select_decomp_table
from torch.utils._python_dispatch import _disable_current_modes

__all__ = ["BackendCompilerFailed", "assert_async", "clean_dispatch_state", "compile_graph",
           "custom_op_body", "foreach_lerp_", "guards_hold", "inductor_cache_dir",
           "jit_binder", "no_buffer_donation", "select_decomp_table"]

assert_async = torch._assert_async
foreach_lerp_ = torch._foreach_lerp_

# the dispatcher's thread-local key sets outside any op: a custom op's body, reached through
# the dispatcher (opcheck, a dispatch mode), runs with the tracing keys excluded
_DEFAULT_KEY_SETS = (torch._C._dispatch_tls_local_include_set(),
                     torch._C._dispatch_tls_local_exclude_set())


@contextlib.contextmanager
def clean_dispatch_state() -> Iterator[None]:
    """Tracing sees neither the dispatch state of the op being run nor a dispatch mode the
    op runs under (opcheck's, a profiler's), and no autograd."""
    with torch._C._ForceDispatchKeyGuard(*_DEFAULT_KEY_SETS), _disable_current_modes(), \
            torch.no_grad():
        yield


def compile_graph(graph: torch.fx.GraphModule, placeholders: list, fake_mode) -> Callable:
    """Inductor's compiled callable for an ATen ``graph`` traced with symbolic sizes, taking a
    list of tensors. Every loop nest gets an OpenMP region whatever the sizes at tracing
    (otherwise a graph traced on a few rows, and cached on disk, would run any size on one
    thread)."""
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
    from torch._inductor.runtime.cache_dir_utils import cache_dir
    return cache_dir()


def no_buffer_donation():
    """A context in which AOTAutograd does not donate buffers, which a graph differentiated
    twice (``retain_graph=True``) needs; it applies to what compiles inside it."""
    return torch._functorch.config.patch(donated_buffer=False)


def jit_binder(kernel, backend) -> Callable:
    """The argument binder ``JITFunction.run`` uses for ``kernel`` on ``backend``."""
    from triton.runtime.jit import create_function_from_signature
    return create_function_from_signature(kernel.signature, kernel.params, backend)
