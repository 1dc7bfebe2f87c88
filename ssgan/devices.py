"""Where a run executes, and every way the models and the trainer differ by device type.

Each difference is one field of :class:`DevicePolicy`, looked up by device type in
:data:`POLICIES`, so that a tool (``bench.gpu_static``) can ask for the ``"cuda"`` decisions on
any machine, and no module scatters its own ``is_cuda`` checks.
"""
from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class DevicePolicy:
    """How one device type runs a training step.

    memory_format: the layout of the models' weights and feature maps in fp32, and
    bf16_memory_format with ``--precision bf16``.
    conv_inputs_in_model_layout: the fused ops that feed a convolution write their output in
        the models' layout (one pass either way): D's input dropout on the channels-first
        images, G's first batch-norm block on its dense layer's channels-first output; and G
        leaves its images in it. On a GPU a convolution whose input and weight layouts differ
        converts the input inside the call, each way. Elsewhere these stay channels-first:
        with 1 or 3 channels a channels-last image fills few lanes of a CPU vector.
    subpixel_deconv: a transposed convolution with few output channels runs its forward as a
        convolution followed by ``pixel_shuffle`` (:mod:`ssgan.subpixel`).
    rewritten_conv_grads: a convolution from few channels takes its input gradient as a
        sub-pixel transposed convolution, and one with few output positions its weight
        gradient as one matrix product (:mod:`ssgan.conv_grads`).
    lr_dtype: the dtype of the learning-rate tensor that every device's fused Adam reads (a
        CUDA graph replays the kernel that reads it): CUDA's kernel reads float32; the CPU's
        reads a double, so float64 there keeps a scheduled lr exact.
    cuda_graph: ``--cuda-graph auto`` replays the training step from one CUDA graph.
    adam_writes_bf16_copies: with ``--precision bf16``, the bf16 weight copies last from step
        to step and Adam reads their bf16 gradients and writes them
        (:func:`ssgan.precision.adam_step`, one launch per player), instead of a cast of the
        weights and one of the gradients per step around PyTorch's fused Adam.
    one_pass_discriminator: the training step runs D once over its concatenated segments
        (real, fake[, labeled]) instead of once per segment: the same function (per-segment
        BatchNorm statistics), a third to a half of D's launches, larger convolutions.
    fused_batch_norm: a BatchNorm with batch statistics runs with its activation and dropout
        as one fused op (``ssgan.kernels.batch_norm_leaky_relu_dropout``) instead of ATen's
        batch norm followed by the activation.
    """
    memory_format: torch.memory_format
    bf16_memory_format: torch.memory_format
    conv_inputs_in_model_layout: bool
    subpixel_deconv: bool
    rewritten_conv_grads: bool
    lr_dtype: torch.dtype
    cuda_graph: bool
    adam_writes_bf16_copies: bool
    one_pass_discriminator: bool
    fused_batch_norm: bool

    def layout(self, precision: str) -> torch.memory_format:
        """The models' memory format at ``--precision`` ``precision``."""
        return self.bf16_memory_format if precision == "bf16" else self.memory_format

    def conv_input_layout(self, precision: str) -> torch.memory_format:
        """The layout the models' fused ops write where they feed a convolution, and of G's
        images, at ``precision``."""
        return (self.layout(precision) if self.conv_inputs_in_model_layout
                else torch.contiguous_format)


# The CPU's entries were chosen by measurement on the CPU (docs/cpu-path.md; one pass and the
# fused batch norm: bench.train_step's --one-pass rows); the GPU's layout and sub-pixel entries
# keep PyTorch's defaults until they are measured on a GPU, and its one pass and fused batch
# norm, its bf16 layouts and its Adam writing the bf16 copies by the static launch count
# (bench.gpu_static; docs/gpu.md). Not an entry, because every device does the same in fp32:
# Adam's fused implementation with a tensor lr.
POLICIES: dict[str, DevicePolicy] = {
    "cpu": DevicePolicy(memory_format=torch.channels_last,
                        bf16_memory_format=torch.channels_last, conv_inputs_in_model_layout=False,
                        subpixel_deconv=True, rewritten_conv_grads=True,
                        lr_dtype=torch.float64, cuda_graph=False, adam_writes_bf16_copies=False,
                        one_pass_discriminator=False, fused_batch_norm=True),
    # bf16 channels-last on a GPU, on paper: cuDNN's bf16 convolutions prefer it, and the fused
    # dropout's channels-last bf16 kernels meet their instruction budget (the gpu_compile tier)
    "cuda": DevicePolicy(memory_format=torch.contiguous_format,
                         bf16_memory_format=torch.channels_last, conv_inputs_in_model_layout=True,
                         subpixel_deconv=False, rewritten_conv_grads=False,
                         lr_dtype=torch.float32, cuda_graph=True, adam_writes_bf16_copies=True,
                         one_pass_discriminator=True, fused_batch_norm=True),
}


_forced: list[DevicePolicy] = []  # innermost decisions_of() block last


def policy(device: torch.device | str) -> DevicePolicy:
    """The decisions for ``device`` (a device, a tensor's device, or a type name such as
    ``"cuda"``); device types without an entry of their own take the GPU's. Inside
    :func:`decisions_of` every device gets that block's decisions."""
    if _forced:
        return _forced[-1]
    kind = device if isinstance(device, str) else device.type
    return POLICIES.get(kind.split(":")[0], POLICIES["cuda"])


@contextlib.contextmanager
def decisions_of(kind: str, **changes) -> Iterator[DevicePolicy]:
    """Within the block, models and trainers built or run on any device take ``kind``'s
    decisions, with ``changes`` (DevicePolicy fields) applied: ``bench.gpu_static`` records a
    GPU's training step on a CPU this way, and ``bench.train_step`` times the CPU's
    alternatives."""
    if kind not in POLICIES:
        raise ValueError(f"no device policy for {kind!r}; known: {', '.join(POLICIES)}")
    _forced.append(dataclasses.replace(POLICIES[kind], **changes))
    try:
        yield _forced[-1]
    finally:
        _forced.pop()


def resolve_device(name: str) -> torch.device:
    """``--device``: auto (CUDA when visible, else the CPU), cpu, cuda or cuda:N; a device
    that is not there is a ValueError naming the flag."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device must be auto, cpu, cuda or cuda:N, got {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for, but no CUDA GPU is visible; use "
                         "--device cpu")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        count = torch.cuda.device_count()
        raise ValueError(f"--device {name}: only {count} CUDA GPU(s) are visible "
                         f"(cuda:0..cuda:{count - 1}); use one of those, or --device cuda")
    return device
