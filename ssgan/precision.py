"""``--precision``: fp32, or bf16 mixed precision as Lightning's ``bf16-mixed`` and
accelerate's ``mixed_precision="bf16"`` mean it.

bf16: the forward runs under ``torch.autocast`` in bfloat16, so convolutions and linear layers
compute in bf16, on bf16 copies of their weights made for the step in one launch for both
players, whose gradients go back in one launch too (autocast would cast each weight in a launch
of its own, and each gradient back in another);
master weights, the gradients handed to Adam and Adam's state stay fp32 (the
parameters never change dtype); BatchNorm's statistics are accumulated in fp32 and its running
statistics are fp32 buffers; the fused ops compute in fp32 and store bf16 activations; the GAN
head, the losses and the feature-matching means are fp32. bf16 needs no loss scaling. bf16 is
only fast where it is native, so a device without it is refused.
"""
from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from torch import nn

from ssgan.kernels._private_api import foreach_copy_, tensors_swapped_in

PRECISIONS = ("fp32", "bf16")
# the CPU features that run bf16 natively (/proc/cpuinfo's names): AVX512-BF16 or AMX (x86),
# BF16 (Arm)
NATIVE_BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")
CPUINFO = Path("/proc/cpuinfo")


def cpu_flags() -> set[str]:
    """The CPU's feature flags as Linux lists them (empty where /proc/cpuinfo is missing)."""
    try:
        text = CPUINFO.read_text()
    except OSError:
        return set()
    return {flag for line in text.splitlines() if line.split(":")[0].strip() in ("flags",
                                                                                "Features")
            for flag in line.split(":", 1)[1].split()}


def missing_bf16_support(device: torch.device) -> str | None:
    """None where ``device`` runs bf16 natively, else what it lacks, in a user's words."""
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        return None if major >= 8 else (f"a GPU of compute capability 8.0 or newer (this one "
                                        f"is {major}.{minor})")
    if device.type == "cpu":
        return None if cpu_flags() & set(NATIVE_BF16_CPU_FLAGS) else (
            "a CPU with native bf16 (AVX512-BF16 or AMX on x86, BF16 on Arm; /proc/cpuinfo "
            "lists none of them)")
    return f"native bf16 on {device.type} (not known to ssgan)"


def check_precision(precision: str, device: torch.device) -> None:
    """A ValueError naming ``--precision`` for an unknown precision, or for bf16 on a device
    where it would be emulated (slower than fp32)."""
    if precision not in PRECISIONS:
        raise ValueError(f"--precision must be one of {', '.join(PRECISIONS)}, got "
                         f"{precision!r}")
    missing = missing_bf16_support(device) if precision == "bf16" else None
    if missing:
        raise ValueError(f"--precision bf16 needs {missing}; here bf16 would be emulated and "
                         "slower than fp32: use --precision fp32")


def step_dtype(precision: str) -> torch.dtype:
    """The dtype a step's convolutions and linear layers compute in at ``precision``, and so
    the one its inputs (images, noise) are made in: autocast then has nothing to cast."""
    return torch.bfloat16 if precision == "bf16" else torch.float32


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """Stock autocast at ``precision``: in ``step_dtype`` for ``bf16``, nothing for ``fp32``."""
    if precision == "bf16":
        return torch.autocast(device.type, step_dtype(precision))
    return contextlib.nullcontext()


class _SpatialMean(torch.autograd.Function):
    """x.mean((2, 3)) in ``dtype``, whose backward writes x's dtype in one launch (ATen's
    ``mean(dtype=)`` divides in ``dtype``, then casts in a second launch)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        ctx.x_dtype, ctx.x_shape, ctx.x_stride = x.dtype, x.shape, x.stride()
        return x.mean(dim=(2, 3), dtype=dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        shape = ctx.x_shape
        spread = grad[:, :, None, None].expand(shape)
        if grad.requires_grad:  # a double backward: the differentiable formula
            return (spread / (shape[2] * shape[3])).to(ctx.x_dtype), None
        out = torch.empty_strided(shape, ctx.x_stride, dtype=ctx.x_dtype, device=grad.device)
        return torch.div(spread, shape[2] * shape[3], out=out), None


def spatial_mean(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The mean over the spatial dims of x (B, C, H, W) as ``dtype`` (B, C), accumulated in it;
    its gradient comes back in x's dtype and layout."""
    return _SpatialMean.apply(x, dtype)


# the layers whose weights autocast runs in bf16, and so the ones a bf16 step copies, unless
# their model lists them in ``fp32_layers`` (a layer it runs outside autocast)
BF16_LAYERS = (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)


@dataclasses.dataclass(frozen=True)
class StepWeights:
    """The weights one step's forward ran with: ``copies`` maps each fp32 parameter that ran
    as a bf16 copy to that copy, a leaf of the step's graph (empty in fp32). The step
    differentiates the leaves, then hands the parameters fp32 gradients."""
    copies: dict[torch.Tensor, torch.Tensor]

    def leaves(self, params: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """What to differentiate for ``params``: each one's bf16 copy where it ran as one."""
        return [self.copies.get(param, param) for param in params]

    def master_grads(self, params: Sequence[torch.Tensor],
                     grads: Sequence[torch.Tensor | None]) -> list[torch.Tensor | None]:
        """``grads`` (of ``leaves(params)``) as the parameters' gradients: each in its
        parameter's dtype and layout, the bf16 ones cast back in one launch for all."""
        cast = [i for i, (param, grad) in enumerate(zip(params, grads))
                if grad is not None and param in self.copies]
        out = list(grads)
        if cast:
            masters = [torch.empty_like(params[i]) for i in cast]
            foreach_copy_(masters, [grads[i] for i in cast])
            for i, master in zip(cast, masters):
                out[i] = master
        return out


def _bf16_params(model: nn.Module) -> dict[str, nn.Parameter]:
    """The parameters of ``model``'s convolution and linear layers (but its ``fp32_layers``),
    by their names in the model."""
    return {f"{prefix}.{name}" if prefix else name: param
            for prefix, layer in model.named_modules()
            if isinstance(layer, BF16_LAYERS) and prefix not in getattr(model, "fp32_layers", ())
            for name, param in layer.named_parameters(recurse=False)}


@contextlib.contextmanager
def mixed_precision(precision: str, device: torch.device,
                    *models: nn.Module) -> Iterator[StepWeights]:
    """The context a training step's forward runs in; it yields the step's
    :class:`StepWeights`. ``fp32``: nothing. ``bf16``: autocast, and within it every
    convolution and linear layer of ``models`` (but a model's ``fp32_layers``) computes with a
    bf16 copy of its fp32 weights, made for the block in one launch for all models. The copies
    are leaves, so each model's gradients reach only its own copies, which
    :meth:`StepWeights.master_grads` casts back in one launch for all."""
    if precision != "bf16":
        yield StepWeights({})
        return
    named = [_bf16_params(model) for model in models]
    masters = [param for params in named for param in params.values()]
    with torch.no_grad():
        copies = [torch.empty_like(param, dtype=step_dtype(precision)) for param in masters]
        foreach_copy_(copies, masters)
    weights = StepWeights({master: copy.requires_grad_()
                           for master, copy in zip(masters, copies)})
    with autocast(precision, device), contextlib.ExitStack() as swaps:
        for model, params in zip(models, named):
            swaps.enter_context(tensors_swapped_in(
                model, {name: weights.copies[param] for name, param in params.items()}))
        yield weights
