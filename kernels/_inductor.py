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

import warnings
from collections.abc import Callable

import torch

# One function is compiled once per dtype and flag combination (scale or not, dropout or not,
# extra class or not ...); a test session meets more of them than Dynamo's default limit of 8.
RECOMPILE_LIMIT = 64

_compiled: dict[Callable, Callable] = {}
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
            compiled = _compiled.get(fn)
            if compiled is None:
                compiled = _compiled[fn] = torch.compile(fn, dynamic=True)
            try:
                with torch._dynamo.config.patch(recompile_limit=RECOMPILE_LIMIT):
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


def reset() -> None:
    """Forgets compiled functions and any failure (tests use it to simulate a fresh process)."""
    global _failure
    _compiled.clear()
    _failure = None
