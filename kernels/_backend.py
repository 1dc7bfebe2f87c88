"""Which implementation runs an op: compiled Triton, the Triton interpreter, the twins' math
compiled by Inductor, or the eager PyTorch twins.

``TRITON_INTERPRET`` is read once, at import, because Triton decides at decoration time whether
a kernel is compiled or interpreted. ``SSGAN_KERNELS`` (or :func:`set_backend`) is read at every
call, so tests and the trainer can switch paths without re-importing.
"""
from __future__ import annotations

import contextlib
import functools
import importlib
import os
import warnings
from collections.abc import Iterator

import torch

from . import _inductor
from ._private_api import custom_op_body

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
BACKENDS = ("auto", "triton", "inductor", "torch")
_override: str | None = None


def set_backend(name: str | None) -> None:
    """Force ``"auto"``, ``"triton"``, ``"inductor"`` or ``"torch"`` for every later call;
    ``None`` defers to the ``SSGAN_KERNELS`` environment variable again."""
    if name is not None and name not in BACKENDS:
        raise ValueError(f"kernel backend must be one of {BACKENDS}, got {name!r}")
    global _override
    _override = name


@contextlib.contextmanager
def use_backend(name: str | None) -> Iterator[None]:
    """Run a block with :func:`set_backend`'s choice, restoring the previous one afterwards."""
    global _override
    previous = _override
    set_backend(name)
    try:
        yield
    finally:
        _override = previous


def requested_backend() -> str:
    """The backend asked for: :func:`set_backend`'s choice, else ``SSGAN_KERNELS``, else auto."""
    name = _override or os.environ.get("SSGAN_KERNELS", "auto").strip().lower() or "auto"
    if name not in BACKENDS:
        raise ValueError(f"SSGAN_KERNELS must be one of {BACKENDS}, got {name!r}")
    return name


def backend_for(tensor: torch.Tensor) -> str:
    """The path an op on ``tensor`` takes: ``"triton"``, ``"interpret"``, ``"inductor"`` or
    ``"torch"``.

    auto: CUDA tensors use compiled Triton; CPU tensors use the interpreter when
    ``TRITON_INTERPRET=1`` was set before import, else the Inductor-compiled twins (the eager
    twins where compilation failed, or where this torch lacks a private API the compiled path
    needs). Without triton installed, what would take a Triton path takes the eager twins,
    after one warning.
    triton: like auto, but a tensor no Triton path can serve raises instead of falling back.
    inductor: the Inductor-compiled twins on any device.
    torch: the eager twins, the reference.
    """
    name = requested_backend()
    if name == "torch":
        return "torch"
    if name == "inductor" or (name == "auto" and not INTERPRET and not tensor.is_cuda):
        return "inductor" if _inductor.available() else "torch"
    if not triton_available():
        if name == "triton":
            raise ValueError("SSGAN_KERNELS=triton, but triton is not installed: install it "
                             "(pip install triton==3.8.0, Linux only) or choose the inductor "
                             "or torch backend (--kernels inductor / --kernels torch)")
        _warn_once(NO_TRITON)
        return "torch"
    if INTERPRET:
        return "interpret"
    if tensor.is_cuda:
        return "triton"
    raise ValueError(
        f"SSGAN_KERNELS=triton, but no Triton path serves a tensor on {tensor.device}: "
        "use a CUDA device, set TRITON_INTERPRET=1 before importing ssgan for CPU tensors, "
        "or choose the inductor or torch backend (SSGAN_KERNELS=inductor / --kernels inductor)"
    )


NO_TRITON = ("ssgan.kernels: triton is not installed, so CUDA tensors (and TRITON_INTERPRET=1) "
             "run the eager PyTorch twins instead of the fused Triton kernels, which is slower; "
             "install triton (pip install triton==3.8.0, Linux only) for the fused kernels")
_warned: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        warnings.warn(message, RuntimeWarning, stacklevel=4)


_triton_importable: bool | None = None


def triton_available() -> bool:
    """Whether triton can be imported (checked once, by importing it; a plain global rather
    than functools.cache, which Dynamo warns about when it traces an op's call)."""
    global _triton_importable
    if _triton_importable is None:
        try:
            import triton  # noqa: F401
            _triton_importable = True
        except ImportError:
            _triton_importable = False
    return _triton_importable


@functools.cache
def triton_module(op: str):
    """The module of ``op``'s Triton kernels and launchers (``._triton_<op>``), imported on
    first use: only a call on the Triton path reaches it."""
    return importlib.import_module(f"._triton_{op}", __package__)


def call_op(op, *args):
    """``op(*args)`` for one of the ops' ``torch.library.custom_op`` halves. While a tracer is
    at work (``torch.compile``, or fake and functional tensors) it stays the registered op: one
    opaque node with its fake implementation. In eager mode it calls the op's Python body
    directly: the custom-op dispatch around it (autograd fallback, no-grad redispatch) is a
    measurable share of a CPU training step (docs/cpu-path.md)."""
    # a traced call's tensors are all fake or functional, so its first argument (a tensor in
    # every op half) tells
    traced = torch.compiler.is_compiling() or type(args[0]) not in _EAGER_TENSOR_TYPES
    return (op if traced else custom_op_body(op))(*args)


_EAGER_TENSOR_TYPES = (torch.Tensor, torch.nn.Parameter)
