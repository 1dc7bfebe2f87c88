"""The notebook's generator and discriminator, built on the fused kernels.

A BatchNorm block runs ATen's batch norm, then the fused leaky-ReLU + dropout kernel where it
drops out, else ATen's leaky ReLU; the blocks without BatchNorm likewise.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

import ssgan.kernels as K
from ssgan import distributed
from ssgan.devices import policy
from ssgan.subpixel import deconv

if TYPE_CHECKING:
    from ssgan.config import TrainConfig
    from ssgan.data import Dataset

BN_EPS = 1e-3  # TensorFlow's default, which the notebook used
EVAL_BN_MODES = ("running", "recalibrated", "batch")


class BatchNorm(nn.BatchNorm2d):
    """A BatchNorm2d whose running statistics a call may leave alone (``update_stats=False``,
    for generated batches), and which ``use_batch_stats`` makes use batch statistics at
    evaluation too (the notebook's behaviour). It runs as ATen's batch norm on every device;
    across torchrun's ranks, batch statistics are those of the global batch
    (:func:`ssgan.distributed.synced_batch_norm`)."""

    def __init__(self, channels: int):
        super().__init__(channels, eps=BN_EPS)
        self.use_batch_stats = False

    def normalize(self, x: torch.Tensor, update_stats: bool = True) -> torch.Tensor:
        """The BatchNorm applied by ATen's ``batch_norm``; x (N, C, ...), returned alike."""
        batch_stats = self.training or self.use_batch_stats
        track = self.training and update_stats
        weight = 0.0
        if track:
            self.num_batches_tracked += 1
            # momentum None means a cumulative average, as in nn.BatchNorm2d
            weight = (1.0 / self.num_batches_tracked.item() if self.momentum is None
                      else self.momentum)
        group = distributed.current()
        if batch_stats and group.active:
            return distributed.synced_batch_norm(group, x, self.weight, self.bias, self.running_mean,
                                                 self.running_var, weight, self.eps, track)
        running = ((self.running_mean, self.running_var) if track or not batch_stats
                   else (None, None))
        return F.batch_norm(x, *running, self.weight, self.bias, batch_stats, weight, self.eps)


class LeakyBlock(nn.Module):
    """Optional BatchNorm (ATen's), then leaky-ReLU and dropout in one fused kernel call.

    Without dropout (p == 0, or evaluation) there is nothing to fuse, and the block runs
    ATen's leaky-ReLU, the identity for slope 1: the fused op would run the same single pass
    plus its own call overhead. The BatchNorm is not folded into the op as scale and shift:
    its statistics, the small ops that make scale and shift and their autograd cost more
    launches than ATen's batch norm on a GPU and more time on a CPU (docs/gpu.md).
    """

    def __init__(self, channels: int | None, alpha: float, p: float = 0.0):
        super().__init__()
        self.bn = BatchNorm(channels) if channels else None
        self.alpha, self.p = alpha, p

    def forward(self, x: torch.Tensor, update_stats: bool = True) -> torch.Tensor:
        if self.bn is not None:
            x = self.bn.normalize(x, update_stats)
        if self.p == 0 or not self.training:
            return x if self.alpha == 1 else F.leaky_relu(x, self.alpha)
        return K.leaky_relu_dropout(x, negative_slope=self.alpha, p=self.p, training=True)


class Discriminator(nn.Module):
    """The notebook's discriminator, an (N[+1])-class classifier, with its dropout applied.

    x: float (B, C, H, W) in [-1, 1], H = W >= 24. Returns class_logits (B, K or K+1), gan_logits
    (B,) with sigmoid(gan_logits) = P(real), and features (B, 2*size_mult) for feature matching.

    The notebook computes bn2 but applies leaky-ReLU to the raw conv2 output, and its x6/bn6
    layer is dead because x7 reads relu5; both are left out here, so conv2 has no BatchNorm.
    Its ``tf.layers.dropout`` calls pass no ``training=`` argument, which in TF1 means
    ``training=False``: the notebook never dropped anything. This model drops (input dropout
    ``drop_rate / 2.5``, then ``drop_rate`` after conv1 and conv3), as the design and Improved
    GAN intend; ``--drop-rate 0`` gives the notebook as it actually ran.
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 10, size_mult: int = 64,
                 drop_rate: float = 0.5, alpha: float = 0.2, extra_class: bool = False):
        super().__init__()
        m = size_mult
        self.extra_class = extra_class
        # leaky-ReLU with slope 1 is the identity: input dropout reuses the same kernel
        self.input_dropout = LeakyBlock(None, alpha=1.0, p=drop_rate / 2.5)
        self.conv1 = nn.Conv2d(in_channels, m, 3, stride=2, padding=1)
        self.act1 = LeakyBlock(None, alpha, drop_rate)
        self.conv2 = nn.Conv2d(m, m, 3, stride=2, padding=1)
        self.act2 = LeakyBlock(None, alpha)
        self.conv3 = nn.Conv2d(m, m, 3, stride=2, padding=1)
        self.act3 = LeakyBlock(m, alpha, drop_rate)
        self.conv4 = nn.Conv2d(m, 2 * m, 3, stride=1, padding=1)
        self.act4 = LeakyBlock(2 * m, alpha)
        self.conv5 = nn.Conv2d(2 * m, 2 * m, 3, stride=1, padding=1)
        self.act5 = LeakyBlock(2 * m, alpha)
        self.conv7 = nn.Conv2d(2 * m, 2 * m, 3, stride=1, padding=0)
        self.act7 = LeakyBlock(None, alpha)
        self.classifier = nn.Linear(2 * m, num_classes + int(extra_class))

    def set_eval_bn(self, mode: str) -> None:
        """``running`` or ``recalibrated`` (running statistics of real training data; the
        latter re-estimated by :meth:`recalibrate_bn` before evaluating) or ``batch`` (batch
        statistics, as the notebook did)."""
        if mode not in EVAL_BN_MODES:
            raise ValueError(f"--eval-bn must be one of {', '.join(EVAL_BN_MODES)}, "
                             f"got {mode!r}")
        for module in self.modules():
            if isinstance(module, BatchNorm):
                module.use_batch_stats = mode == "batch"

    @torch.no_grad()
    def recalibrate_bn(self, batches: Iterable[torch.Tensor]) -> None:
        """Re-estimates the BatchNorm running statistics as a plain average over ``batches`` of
        real images (float (B, C, H, W) in [-1, 1]) with dropout off. During training they are
        measured with dropout on, which inflates the variances that evaluation then divides by."""
        norms = [m for m in self.modules() if isinstance(m, BatchNorm)]
        blocks = [m for m in self.modules() if isinstance(m, LeakyBlock)]
        saved = [m.momentum for m in norms], [b.p for b in blocks], self.training
        for m in norms:
            m.reset_running_stats()
            m.momentum = None
        for b in blocks:
            b.p = 0.0
        self.train()
        for batch in batches:
            self(batch)
        for m, momentum in zip(norms, saved[0]):
            m.momentum = momentum
        for b, p in zip(blocks, saved[1]):
            b.p = p
        self.train(saved[2])

    def features(self, x: torch.Tensor, update_stats: bool = True) -> torch.Tensor:
        """The pooled features (B, 2*size_mult) that the heads read and feature matching
        compares; x as in :meth:`forward`."""
        h = self.input_dropout(x)
        h = self.act1(self.conv1(h))
        h = self.act2(self.conv2(h))
        for layer, act in ((self.conv3, self.act3), (self.conv4, self.act4),
                           (self.conv5, self.act5)):
            h = act(layer(h), update_stats)
        h = self.act7(self.conv7(h))
        # at least fp32 (bf16 under autocast): feature matching compares these means
        return h.to(K.reference.compute_dtype(h.dtype)).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor, update_stats: bool = True
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``update_stats=False`` keeps generated batches out of the BN running statistics."""
        features = self.features(x, update_stats)
        class_logits = self.classifier(features)
        # the log-sum-exp head in fp32 (at least) whatever autocast made of the logits
        head_in = class_logits.to(K.reference.compute_dtype(class_logits.dtype))
        return class_logits, K.gan_logits(head_in, extra_class=self.extra_class), features


class Generator(nn.Module):
    """The notebook's generator: dense -> (4*m, s/8, s/8) -> three 5x5 stride-2 transposed
    convolutions -> tanh. z: float (B, z_dim). Returns float (B, C, s, s) in [-1, 1],
    channels-first."""

    def __init__(self, z_dim: int = 100, out_channels: int = 3, image_size: int = 32,
                 size_mult: int = 32, alpha: float = 0.2):
        super().__init__()
        if image_size % 8:
            raise ValueError(f"image size must be a multiple of 8, got {image_size} "
                             "(--image-size)")
        m, self.base = size_mult, image_size // 8
        self.z_dim = z_dim
        self.dense = nn.Linear(z_dim, self.base * self.base * 4 * m)
        self.act0 = LeakyBlock(4 * m, alpha)
        self.deconv1 = nn.ConvTranspose2d(4 * m, 2 * m, 5, 2, padding=2, output_padding=1)
        self.act1 = LeakyBlock(2 * m, alpha)
        self.deconv2 = nn.ConvTranspose2d(2 * m, m, 5, 2, padding=2, output_padding=1)
        self.act2 = LeakyBlock(m, alpha)
        self.deconv3 = nn.ConvTranspose2d(m, out_channels, 5, 2, padding=2, output_padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.dense(z).view(z.shape[0], -1, self.base, self.base)
        h = self.act0(h)
        h = self.act1(deconv(self.deconv1, h))
        h = self.act2(deconv(self.deconv2, h))
        # images are channels-first whatever the feature maps' layout (see DevicePolicy)
        return torch.tanh(deconv(self.deconv3, h)).contiguous()


def build_models(cfg: "TrainConfig", data: "Dataset", device: torch.device
                 ) -> tuple[Generator, Discriminator]:
    """G and D for ``cfg``'s widths and ``data``'s images and classes, on ``device`` in its
    layout at its precision (``DevicePolicy.layout``), D with ``cfg.eval_bn``'s evaluation
    mode."""
    g = Generator(cfg.z_dim, data.channels, data.image_size, cfg.g_size_mult, cfg.alpha)
    d = build_discriminator(cfg, data.channels, data.num_classes)
    layout = policy(device).layout(cfg.precision)
    return g.to(device, memory_format=layout), d.to(device, memory_format=layout)


def build_discriminator(cfg: "TrainConfig", channels: int, num_classes: int) -> Discriminator:
    """D for ``cfg``'s width, dropout, slope and extra class, with its evaluation BatchNorm
    mode, on the CPU."""
    d = Discriminator(channels, num_classes, cfg.d_size_mult, cfg.drop_rate, cfg.alpha,
                      cfg.extra_class)
    d.set_eval_bn(cfg.eval_bn)
    return d


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
