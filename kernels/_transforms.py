"""What the fused ops' autograd Functions do beyond one backward pass.

- Double backward: the kernels' backward is differentiable only once. When autograd builds a
  graph of the backward (``create_graph=True``: R1 and WGAN-GP penalties, ``gradgradcheck``),
  a Function runs its reference twin's backward math instead, plain PyTorch that autograd
  differentiates again. Ordinary training keeps the once-differentiable kernels.
- ``torch.func`` transforms: the Functions use ``setup_context``, so ``torch.func.grad`` and
  friends work. ``vmap`` and forward-mode AD have no rule; they raise an error that names the
  op and the transform instead of failing somewhere inside PyTorch. (Forward mode is refused
  at the call, not by a ``jvp`` slot: Dynamo cannot trace a Function that has one.)
"""
from __future__ import annotations

import torch
from torch.autograd import forward_ad

VMAP_ADVICE = ("call the op on the whole batched tensor (it already works row by row), or use "
               "--kernels torch / SSGAN_KERNELS=torch for the plain-PyTorch twins")
JVP_ADVICE = ("use reverse mode (torch.autograd.grad, torch.func.grad), or --kernels torch / "
              "SSGAN_KERNELS=torch for the plain-PyTorch twins")
FORWARD_MODE = "forward-mode AD (torch.func.jvp, torch.autograd.forward_ad)"


def building_backward_graph() -> bool:
    """Whether the running backward must itself be differentiable: the autograd engine runs a
    backward with grad mode on exactly when it was asked for ``create_graph=True``."""
    return torch.is_grad_enabled()


def unsupported(op: str, transform: str, advice: str) -> NotImplementedError:
    return NotImplementedError(f"ssgan.kernels.{op} does not support {transform}; {advice}")


def vmap_refusal(op: str) -> staticmethod:
    """A Function's ``vmap`` slot that raises a NotImplementedError naming ``op``."""
    def vmap(*args, **kwargs):
        raise unsupported(op, "torch.func.vmap", VMAP_ADVICE)
    return staticmethod(vmap)


def check_no_tangents(op: str, *tensors: torch.Tensor | None) -> None:
    """Refuses, by name, inputs that carry a forward-mode tangent (eager calls only: a traced
    call has none)."""
    if torch.compiler.is_compiling():
        return
    for t in tensors:
        if t is not None and forward_ad.unpack_dual(t).tangent is not None:
            raise unsupported(op, FORWARD_MODE, JVP_ADVICE)
