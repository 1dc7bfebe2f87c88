"""``--precision``: fp32, or bf16 mixed precision as Lightning's ``bf16-mixed`` and
accelerate's ``mixed_precision="bf16"`` mean it.

bf16: the forward runs under ``torch.autocast`` in bfloat16, so convolutions and linear layers
compute in bf16, on bf16 copies of their weights made for the step in one launch for both
players, whose gradients go back in one launch too (autocast would cast each weight in a launch
of its own, and each gradient back in another). Where the device decides so (a GPU:
``DevicePolicy.adam_writes_bf16_copies``) the copies last from step to step instead, and Adam
reads their bf16 gradients and writes them (:class:`WeightCopies`, :func:`adam_step`): no cast
at all. Master weights, the gradients Adam computes with (a bf16 one widened to fp32 in a
register is its fp32 cast) and Adam's state stay fp32 (the parameters never change dtype);
BatchNorm's statistics are accumulated in fp32 and its running statistics are fp32 buffers; the
fused ops compute in fp32 and store bf16 activations; the GAN head, the losses and the
feature-matching means are fp32. bf16 needs no loss scaling. bf16 is only fast where it is
native, so a device without it is refused.
"""
from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from torch import nn

import ssgan.kernels as K
from ssgan.kernels._private_api import foreach_add_, foreach_copy_, tensors_swapped_in, version_of

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
    differentiates the leaves, then hands the parameters fp32 gradients, or, where
    ``kept`` (:class:`WeightCopies`), hands the optimizer the bf16 gradients
    (:func:`adam_step`)."""
    copies: dict[torch.Tensor, torch.Tensor]
    kept: "WeightCopies | None" = None

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


class WeightCopies:
    """bf16 copies of ``models``' convolution and linear weights (but their ``fp32_layers``),
    leaves of the step's graph. Made for one step, or kept from step to step where
    :func:`adam_step` writes them as it updates the fp32 weights. A weight changed any other
    way (a checkpoint, a broadcast, an in-place op) moves its version counter, and
    :meth:`refresh` then copies every weight again, in one launch."""

    def __init__(self, *models: nn.Module, dtype: torch.dtype = torch.bfloat16):
        self.named = [_bf16_params(model) for model in models]
        self.masters = [param for params in self.named for param in params.values()]
        self.copies = [torch.empty_like(param, dtype=dtype).requires_grad_()
                       for param in self.masters]
        self._synced: list[int] | None = None   # the weights' versions the copies hold

    def refresh(self) -> None:
        """Copies the weights again unless none changed since the copies were last written."""
        versions = [version_of(p) for p in self.masters]
        if versions != self._synced:
            with torch.no_grad():
                foreach_copy_(self.copies, self.masters)
            self._synced = versions   # the copy moves the copies' versions, not the weights'

    def mark_synced(self) -> None:
        """Records that the copies hold the weights as they are now."""
        self._synced = [version_of(p) for p in self.masters]


def adam_step(opt: torch.optim.Adam, params: Sequence[torch.Tensor],
              grads: Sequence[torch.Tensor], weights: StepWeights) -> None:
    """``opt``'s step (PyTorch's Adam: one param group, no weight decay, no AMSGrad) for
    ``params`` from ``grads`` (those of ``weights.leaves(params)``: bf16 where a parameter ran
    as a kept copy), as :func:`ssgan.kernels.mixed_precision_adam_`: one launch that updates
    the fp32 weights and Adam's state in ``opt.state`` (so checkpoints are unchanged) and
    writes the kept copies, after one launch for the step counts."""
    group = opt.param_groups[0]
    if (len(opt.param_groups) != 1 or group["weight_decay"] or group["amsgrad"]
            or group["maximize"]):
        raise ValueError("adam_step runs plain Adam: one param group, no weight decay, "
                         "AMSGrad or maximize")
    for param in params:
        state = opt.state[param]
        if not state:  # as PyTorch's fused Adam starts a parameter's state
            state["step"] = torch.zeros((), dtype=torch.float32, device=param.device)
            state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
    states = [opt.state[param] for param in params]
    foreach_add_([state["step"] for state in states], 1)
    beta1, beta2 = group["betas"]
    K.mixed_precision_adam_(params, grads, [state["exp_avg"] for state in states],
                            [state["exp_avg_sq"] for state in states],
                            [weights.copies.get(param, param) for param in params],
                            states[0]["step"], group["lr"], beta1=beta1, beta2=beta2,
                            eps=group["eps"])
    weights.kept.mark_synced()


@contextlib.contextmanager
def mixed_precision(precision: str, device: torch.device, *models: nn.Module,
                    kept: WeightCopies | None = None) -> Iterator[StepWeights]:
    """The context a training step's forward runs in; it yields the step's
    :class:`StepWeights`. ``fp32``: nothing. ``bf16``: autocast, and within it every
    convolution and linear layer of ``models`` (but a model's ``fp32_layers``) computes with a
    bf16 copy of its fp32 weights: ``kept``'s (refreshed where a weight changed), else made
    for the block in one launch for all models. The copies are leaves, so each model's
    gradients reach only its own copies, which :meth:`StepWeights.master_grads` casts back in
    one launch for all (or :func:`adam_step` reads as they are)."""
    if precision != "bf16":
        yield StepWeights({})
        return
    copies = kept if kept is not None else WeightCopies(*models, dtype=step_dtype(precision))
    copies.refresh()
    weights = StepWeights(dict(zip(copies.masters, copies.copies)), kept)
    with autocast(precision, device), contextlib.ExitStack() as swaps:
        for model, params in zip(models, copies.named):
            swaps.enter_context(tensors_swapped_in(
                model, {name: weights.copies[param] for name, param in params.items()}))
        yield weights
