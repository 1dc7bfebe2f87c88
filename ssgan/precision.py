"""``--precision``: fp32, or bf16 mixed precision as Lightning's ``bf16-mixed`` and
accelerate's ``mixed_precision="bf16"`` mean it.

bf16: the forward runs under ``torch.autocast`` in bfloat16, so convolutions and linear layers
compute in bf16; master weights, the gradients handed to Adam and Adam's state stay fp32 (the
parameters never change dtype); BatchNorm's statistics are accumulated in fp32 and its running
statistics are fp32 buffers; the fused ops compute in fp32 and store bf16 activations; the GAN
head, the losses and the feature-matching means are fp32. bf16 needs no loss scaling. bf16 is
only fast where it is native, so a device without it is refused.
"""
from __future__ import annotations

import contextlib
from pathlib import Path

import torch

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


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """The context a training step's forward runs in: bf16 autocast for ``bf16``, nothing for
    ``fp32``."""
    if precision == "bf16":
        return torch.autocast(device.type, torch.bfloat16)
    return contextlib.nullcontext()
