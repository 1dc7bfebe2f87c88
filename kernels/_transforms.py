"""What the fused ops' autograd Functions do beyond one backward pass.

- Double backward: the kernels' backward is differentiable only once. When autograd builds a
  graph of the backward (``create_graph=True``: R1 and WGAN-GP penalties, ``gradgradcheck``),
  a Function runs its reference twin's backward math instead, plain PyTorch that autograd
  differentiates again. Ordinary training keeps the once-differentiable kernels.
- ``torch.func`` transforms: the Functions use ``setup_context``, so ``torch.func.grad`` and
  friends work. ``vmap`` and forward-mode AD have no rule; they raise an error that names the
  op and the transform instead of failing somewhere inside PyTorch.
"""
from __future__ import annotations

import torch


def building_backward_graph() -> bool:
    """Whether the running backward must itself be differentiable: the autograd engine runs a
    backward with grad mode on exactly when it was asked for ``create_graph=True``."""
    return torch.is_grad_enabled()


def unsupported(op: str, transform: str, advice: str):
    """A staticmethod for a Function's ``vmap`` or ``jvp`` slot that raises a
    NotImplementedError naming ``op`` and ``transform``."""
    def refuse(*args, **kwargs):
        raise NotImplementedError(f"ssgan.kernels.{op} does not support {transform}; {advice}")
    return staticmethod(refuse)


VMAP_ADVICE = ("call the op on the whole batched tensor (it already works row by row), or use "
               "--kernels torch / SSGAN_KERNELS=torch for the plain-PyTorch twins")
JVP_ADVICE = ("use reverse mode (torch.autograd.grad, torch.func.grad), or --kernels torch / "
              "SSGAN_KERNELS=torch for the plain-PyTorch twins")


def refusals(op: str) -> tuple[staticmethod, staticmethod]:
    """The ``vmap`` and ``jvp`` slots of ``op``'s Function, both refusing by name."""
    return (unsupported(op, "torch.func.vmap", VMAP_ADVICE),
            unsupported(op, "forward-mode AD (torch.func.jvp, torch.autograd.forward_ad)",
                        JVP_ADVICE))
