"""The fast CPU path: the twins' forward and backward math compiled by ``torch.compile``.

Inductor turns ``reference.*_forward`` / ``*_backward`` into fused C++ loops: the Philox draw,
the affine, the activation and the dropout of one element happen in registers, and the backward
regenerates the dropout mask from the seed as the GPU kernels do. Shapes are compiled once as
dynamic, and Inductor's on-disk cache makes later runs skip the C++ compilation.

Where nothing can be compiled (no C++ compiler, say), the first call warns once and every later
call runs the same math eagerly; :func:`available` then turns false, so ``backend_for`` names
the ``torch`` path that really runs.
"""
from __future__ import annotations

import types
import warnings
from collections.abc import Callable

import torch

_compiled: dict[tuple, Callable] = {}
_failure: str | None = None


def available() -> bool:
    """False once a compilation has failed in this process (the eager twins run instead)."""
    return _failure is None


def call(fn: Callable, *args):
    """``fn(*args)`` through its Inductor-compiled version, without autograd (the callers are
    the forward and backward halves of a custom op)."""
    global _failure
    # requires_grad is part of Dynamo's guards but means nothing inside a custom op
    args = tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args)
    with torch.no_grad():
        if _failure is None:
            key = (fn, *map(_signature, args))
            compiled = _compiled.get(key)
            if compiled is None:
                compiled = _compiled[key] = torch.compile(_own_code_copy(fn), dynamic=True)
            try:
                return compiled(*args)
            except torch._dynamo.exc.BackendCompilerFailed as err:
                _failure = str(err).strip().splitlines()[0]
                warnings.warn(
                    "ssgan.kernels: the CPU kernels could not be compiled by torch.compile "
                    f"({_failure}); running the eager PyTorch twins instead, which is slower. "
                    "Install a C++ compiler (e.g. g++) to get the fast path, or choose the "
                    "torch backend explicitly (SSGAN_KERNELS=torch / --kernels torch) to "
                    "silence this.", RuntimeWarning, stacklevel=3)
        return fn(*args)


def _signature(arg) -> object:
    """What selects a compiled variant besides the shapes: dtypes, ranks, layouts, absent
    arguments, flags, and whether a float is zero (p == 0 skips the dropout)."""
    if isinstance(arg, torch.Tensor):
        return arg.dtype, arg.dim(), arg.is_contiguous()
    if isinstance(arg, float):
        return arg == 0.0
    return arg


def _own_code_copy(fn: Callable) -> Callable:
    """``fn`` with a code object of its own. Dynamo keeps its compiled variants and their guards
    per code object and checks them one by one on every call: one copy per signature keeps
    that list short (a cheap lookup, far from Dynamo's recompile limit)."""
    return types.FunctionType(fn.__code__.replace(), fn.__globals__, fn.__name__,
                              fn.__defaults__, fn.__closure__)

