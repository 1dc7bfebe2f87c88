"""The fast CPU path: the twins' forward and backward math compiled by Inductor.

Inductor turns ``reference.*_forward`` / ``*_backward`` into fused C++ loops: the Philox draw,
the affine, the activation and the dropout of one element happen in registers, and the backward
regenerates the dropout mask from the seed as the GPU kernels do.

Each function is traced once per signature into an ATen graph with symbolic sizes
(``make_fx``) and compiled by Inductor's own entry point (``compile_fx_inner``), whose on-disk
FX-graph cache makes later runs skip the C++ compilation. ``torch.compile`` would do the same
work but puts Dynamo's frame evaluation, guards and AOTAutograd's runtime wrappers around every
call, a cost of the order of the small ops' own (docs/cpu-path.md). Here a call costs a
dictionary lookup and Inductor's generated wrapper. The guards Dynamo would check, we check
once per new set of input sizes and strides: the traced graph's shape guards (duck-sized dims
equal, a size-1 dim stays 1, ...) against the inputs. The private entry points this needs are
in :mod:`._private_api`.

Where nothing can be compiled (no C++ compiler, say), the first call warns once and every later
call runs the same math eagerly; :func:`available` then turns false, so ``backend_for`` names
the ``torch`` path that really runs.
"""
from __future__ import annotations

import os
import warnings
from collections import Counter
from collections.abc import Callable

import torch

from . import _private_api as private

_failure: str | None = None


class _Compiled:
    """One traced-and-compiled variant of a function: the Inductor graph and the symbolic
    placeholders whose shape guards say which inputs it serves."""

    def __init__(self, fn: Callable, args: tuple):
        # detached: autograd metadata means nothing to the graph of a custom op's half
        tensors = [a.detach() for a in args if isinstance(a, torch.Tensor)]
        self._tensor_positions = [i for i, a in enumerate(args) if isinstance(a, torch.Tensor)]

        def on_tensors(*tensor_args):
            full = list(args)
            for i, t in zip(self._tensor_positions, tensor_args):
                full[i] = t
            result = fn(*full)
            self.single_output = isinstance(result, torch.Tensor)
            return (result,) if self.single_output else result  # Inductor wants a tuple

        # functional ATen graph (the twins write into buffers they allocate), Inductor's
        # decompositions, every size and stride a symbol unless it is 0 or 1
        graph = private.make_fx(torch.func.functionalize(on_tensors, remove="mutations"),
                        decomposition_table=private.select_decomp_table(),
                        tracing_mode="symbolic")(*tensors)
        self._placeholders = [n.meta["val"] for n in graph.graph.nodes if n.op == "placeholder"]
        fake_mode = self._placeholders[0].fake_mode
        self._shape_env = fake_mode.shape_env
        # make_fx's handle on it is unpicklable and would bar the FX cache; Inductor finds the
        # same one through the placeholders
        graph.shape_env = None
        self._run = private.compile_graph(graph, self._placeholders, fake_mode)

    def serves(self, tensors: list[torch.Tensor]) -> bool:
        """Whether the graph's shape guards hold for these inputs (static sizes included)."""
        return private.guards_hold(self._shape_env, self._placeholders, tensors)

    def __call__(self, tensors: list[torch.Tensor]):
        return self._run(tensors)


# (fn, its non-tensor arguments, each tensor's dtype, device and rank) -> the variants
# compiled so far
_variants: dict[tuple, list[_Compiled]] = {}
# the same key plus each tensor's sizes and strides -> the variant that serves them
_by_layout: dict[tuple, _Compiled] = {}
# fn -> how many variants of it this process has built
_built: Counter = Counter()


def compilations(fn: Callable | None = None) -> int:
    """How many compiled variants this process has built, of ``fn`` or of every function: a
    call whose sizes and strides a variant's guards admit builds none."""
    return _built[fn] if fn is not None else sum(_built.values())


def forget_compiled() -> None:
    """Drops every variant this process built, so that the next calls build them again (from
    Inductor's disk cache where it holds them)."""
    _variants.clear()
    _by_layout.clear()


def available() -> bool:
    """False once a compilation has failed in this process, or when this torch lacks a
    private API the compiled path needs (the eager twins run instead, after one warning)."""
    if _failure is None and private.unavailable is not None:
        _give_up(private.unavailable, _private_api_advice())
    return _failure is None


def _private_api_advice() -> str:
    pinned = "" if private.pinned_torch() else (
        f" (this is torch {torch.__version__}; ssgan pins {private.PINNED_TORCH})")
    return ("this torch lacks or changed a private API that the compiled CPU path uses"
            f"{pinned}: kernels/_private_api.py lists them. Install the pinned torch for the "
            "fast path, or choose the torch backend (SSGAN_KERNELS=torch / --kernels torch) "
            "to silence this")


def _compiler_advice() -> str:
    compiler = os.environ.get("CXX") or "g++"
    return (f"no working C++ compiler ({compiler}); the CPU path then runs the eager twins, "
            "a slower training step (the README's Install section says how much). Install a "
            "C++ compiler (e.g. g++) or set CXX to one for the fast path, or choose the torch "
            "backend (SSGAN_KERNELS=torch / --kernels torch) to silence this")


def _give_up(reason: str, advice: str) -> None:
    """Turns the compiled path off for this process, with one warning."""
    global _failure
    _failure = reason
    warnings.warn(f"ssgan.kernels: the CPU kernels cannot be compiled by Inductor ({reason}); "
                  f"running the eager PyTorch twins instead: {advice}.", RuntimeWarning,
                  stacklevel=5)


def call(fn: Callable, *args):
    """``fn(*args)`` through its Inductor-compiled version, without autograd (the callers are
    the forward and backward halves of a custom op). Tensors may have any sizes and strides;
    every other argument (floats, flags, None) is a compile-time constant."""
    if not available():
        return fn(*args)
    tensors, layout = [], [fn]
    for a in args:
        if isinstance(a, torch.Tensor):
            tensors.append(a)
            layout.append((a.dtype, a.device, a.shape, a.stride()))
        else:
            layout.append(a)
    layout_key = tuple(layout)
    compiled = _by_layout.get(layout_key)
    if compiled is None:
        compiled = _variant_for(fn, args, tensors)
        if compiled is None:
            return fn(*args)
        _by_layout[layout_key] = compiled
    outputs = compiled(tensors)
    return outputs[0] if compiled.single_output else tuple(outputs)


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0][:300]


def _variant_for(fn: Callable, args: tuple, tensors: list[torch.Tensor]) -> _Compiled | None:
    """A compiled variant whose guards hold for ``args``, compiling one when none does; None
    (after one warning) when compilation fails."""
    key = (fn, *[(a.dtype, a.device, a.dim()) if isinstance(a, torch.Tensor) else a
                 for a in args])
    variants = _variants.setdefault(key, [])
    for variant in variants:
        if variant.serves(tensors):
            return variant
    try:
        with private.clean_dispatch_state():
            variant = _Compiled(fn, args)
    except private.BackendCompilerFailed as err:  # Inductor's errors derive from it
        _give_up(_first_line(err), _compiler_advice())
        return None
    except (TypeError, AttributeError, ImportError) as err:
        if private.pinned_torch():
            raise  # on the pinned torch these are bugs, not a changed private API
        _give_up(_first_line(err), _private_api_advice())
        return None
    variants.append(variant)
    _built[fn] += 1
    return variant
