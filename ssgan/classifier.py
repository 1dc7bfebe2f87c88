"""The trained discriminator as a K-class image classifier: :func:`load_classifier`, and what
``ssgan predict`` and ``ssgan export`` build on it.

The classifier takes float32 (N, C, H, W) images in [0, 1] at the model's size (torchvision's
``to_dtype(scale=True)`` convention) and returns (N, K) real-class logits. It holds the weights
evaluation used (the weight average where the run kept one) with the BatchNorm statistics of the
run's last evaluation, which the checkpoint stores, so it gives the accuracy the run reported
without the training data.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from ssgan import checkpoints
from ssgan.config import TrainConfig
from ssgan.data import image_to_uint8
from ssgan.devices import decisions_of, policy, resolve_device
from ssgan.models import Discriminator, build_discriminator

MNIST_DIGIT_SIZE = 28  # the IDX files' side; training pads it to 32 (ssgan.data)


class Classifier(nn.Module):
    """D's real-class logits: x float32 (N, C, H, W) in [0, 1] -> (N, K) logits."""

    def __init__(self, d: Discriminator, num_classes: int):
        super().__init__()
        self.d, self.num_classes = d, num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # the trainer's to_unit_range maps uint8 u to u / 127.5 - 1, i.e. 2 * (u / 255) - 1
        return self.d.classifier(self.d.features(x * 2.0 - 1.0))[:, :self.num_classes]


@dataclass
class LoadedClassifier:
    """What :func:`load_classifier` returns: the model in eval mode, its class names (K), and
    ``transform``, from a PIL image or a uint8 (C, H, W) tensor to the model's float input
    (C, H, W) in [0, 1]."""
    model: Classifier
    class_names: list[str]
    transform: Callable[[Any], torch.Tensor]
    image_size: int
    channels: int
    checkpoint: Path
    epoch: int


def _input_transform(cfg: TrainConfig, size: int, channels: int
                     ) -> Callable[[Any], torch.Tensor]:
    """Converts an image as training converted its dataset's images: to ``channels``, MNIST's
    28x28 digits padded to the model's size (as ssgan.data pads them), anything else resized
    with bilinear filtering (as image folders are); then scaled to [0, 1]."""
    pad = (size - MNIST_DIGIT_SIZE) // 2

    def transform(image: Image.Image | torch.Tensor) -> torch.Tensor:
        if isinstance(image, torch.Tensor):
            if image.dtype != torch.uint8 or image.dim() != 3:
                raise ValueError(f"expected a uint8 (C, H, W) image tensor, got "
                                 f"{image.dtype} {tuple(image.shape)}")
            image = Image.fromarray(image.permute(1, 2, 0).squeeze(-1).cpu().numpy())
        if cfg.dataset == "mnist" and image.size == (MNIST_DIGIT_SIZE, MNIST_DIGIT_SIZE) and pad:
            digit = image_to_uint8(image, MNIST_DIGIT_SIZE, channels)
            return F.pad(digit, (pad, pad, pad, pad)).float() / 255.0
        return image_to_uint8(image, size, channels).float() / 255.0
    return transform


def load_classifier(path: str | Path, device: str = "auto") -> LoadedClassifier:
    """The classifier of a checkpoint or run folder (``RUN/checkpoints/last.pt``), on
    ``device`` (auto, cpu, cuda, cuda:N), in evaluation mode. A file that is not an ssgan
    checkpoint, or one written before checkpoints kept their evaluation statistics, is a
    ValueError naming it."""
    dev = resolve_device(device)
    file = checkpoints.resolve(path)
    state = checkpoints.load(file)
    cfg = checkpoints.train_config(state, file)
    if "eval_buffers" not in state:
        raise ValueError(f"{file} holds no evaluation statistics (no evaluation has run yet, "
                         "or an older ssgan wrote it); continue the run with --resume until "
                         "it evaluates")
    with checkpoints.building_from(file):
        num_classes, size, channels = state["num_classes"], state["image_size"], state["channels"]
        d = build_discriminator(cfg, channels, num_classes)
        d.load_state_dict(checkpoints.ema_weights(state) or state["discriminator"])
        d.load_state_dict(state["eval_buffers"], strict=False)
        names = [str(n) for n in state["class_names"] or range(num_classes)]
        if len(names) != num_classes:
            raise ValueError(f"{len(names)} class names for {num_classes} classes")
    model = Classifier(d, num_classes).to(dev, memory_format=policy(dev).memory_format).eval()
    return LoadedClassifier(model, names, _input_transform(cfg, size, channels), size,
                            channels, file, state["epoch"])


INPUT_SPEC = "input_spec.json"
CLASS_NAMES = "class_names.json"


def export_classifier(path: str | Path, out: str | Path) -> Path:
    """Writes a ``torch.export`` program of the classifier at ``path`` to ``out`` (.pt2):
    evaluation mode, a dynamic batch dimension, ATen ops only (BatchNorm as ATen's batch norm,
    no dropout, no ssgan ops), so that ``torch.export.load(out).module()`` runs where ssgan is
    not installed. The class names and the input spec are stored as extra files."""
    loaded = load_classifier(path, device="cpu")
    # plain layout: the program's weights are then whole, contiguous tensors
    model = loaded.model.to(memory_format=torch.contiguous_format)
    size, channels = loaded.image_size, loaded.channels
    if any(m.use_batch_stats for m in model.modules() if hasattr(m, "use_batch_stats")):
        raise ValueError(f"{loaded.checkpoint} evaluates with batch statistics (--eval-bn "
                         "batch), so its predictions depend on the batch; export needs "
                         "running or recalibrated statistics")
    example = torch.rand(2, channels, size, size)
    batch = torch.export.Dim("batch", min=1, max=2**16)
    # the CPU's decisions: ATen's batch norm, never the fused op with BatchNorm folded in
    with decisions_of("cpu"), torch.no_grad():
        program = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
    spec = {"shape": ["N", channels, size, size], "dtype": "float32", "range": [0.0, 1.0],
            "output": ["N", len(loaded.class_names)], "output_is": "real-class logits",
            "checkpoint": str(loaded.checkpoint), "epoch": loaded.epoch}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.export.save(program, out, extra_files={
        CLASS_NAMES: json.dumps(loaded.class_names), INPUT_SPEC: json.dumps(spec)})
    return out
