"""The notebook's generator and discriminator, built on the fused kernels.

D takes a batch of segments (real, generated, labeled images) and normalises each with its own
batch statistics, so one pass over the concatenated batch computes what one pass per segment
does; which of the two a device runs, and whether its BatchNorm blocks run as one fused op, are
its policy's choices (``ssgan.devices``).
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

import ssgan.kernels as K
from ssgan import distributed
from ssgan.conv_grads import conv
from ssgan.devices import policy
from ssgan.precision import spatial_mean
from ssgan.subpixel import deconv

if TYPE_CHECKING:
    from ssgan.config import TrainConfig
    from ssgan.data import Dataset

BN_EPS = 1e-3  # TensorFlow's default, which the notebook used
EVAL_BN_MODES = ("running", "recalibrated", "batch")


class BatchNorm(nn.BatchNorm2d):
    """A BatchNorm2d over a batch of segments (real, generated, labeled images) that
    normalises each segment with its own batch statistics, so that one call over the
    concatenated batch is the same function as one call per segment. Running statistics come
    from the first segment alone, and only with ``update_stats``. ``use_batch_stats`` makes
    it use batch statistics at evaluation too (the notebook's behaviour). Across torchrun's
    ranks, batch statistics are those of the global batch
    (:func:`ssgan.distributed.synced_batch_norm`)."""

    def __init__(self, channels: int):
        super().__init__(channels, eps=BN_EPS)
        self.use_batch_stats = False

    @property
    def batch_statistics(self) -> bool:
        return self.training or self.use_batch_stats

    def track(self, update_stats: bool) -> tuple[bool, float]:
        """(whether this call moves the running statistics, by which factor), counting the
        call as nn.BatchNorm2d does."""
        if not (self.training and update_stats):
            return False, 0.0
        self.num_batches_tracked += 1
        # momentum None means a cumulative average, as in nn.BatchNorm2d
        return True, (1.0 / self.num_batches_tracked.item() if self.momentum is None
                      else self.momentum)

    def normalize(self, x: torch.Tensor, segments: tuple[int, ...] | None = None,
                  update_stats: bool = True) -> torch.Tensor:
        """The BatchNorm of x (N, C, ...) by ATen's batch norm (per segment), returned alike."""
        if not self.batch_statistics:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                                False, 0.0, self.eps)
        track, momentum = self.track(update_stats)
        segments = segments or (x.shape[0],)
        group = distributed.current()
        if group.active:
            return distributed.synced_batch_norm(group, x, self.weight, self.bias,
                                                 self.running_mean, self.running_var, momentum,
                                                 self.eps, track, segments)
        parts, start = [], 0
        for i, size in enumerate(segments):
            running = (self.running_mean, self.running_var) if track and i == 0 else (None, None)
            parts.append(F.batch_norm(x[start:start + size], *running, self.weight, self.bias,
                                      True, momentum, self.eps))
            start += size
        return parts[0] if len(parts) == 1 else torch.cat(parts)


class LeakyBlock(nn.Module):
    """Optional BatchNorm, then leaky-ReLU and dropout.

    Where the device decides so (``DevicePolicy.fused_batch_norm``), a BatchNorm with batch
    statistics runs with the activation and dropout as one fused op
    (:func:`ssgan.kernels.batch_norm_leaky_relu_dropout`: two launches each way, whatever the
    segments). Elsewhere it is ATen's batch norm, then the fused leaky-ReLU + dropout kernel
    where the block drops out, else ATen's leaky-ReLU (the identity for slope 1): without
    dropout the fused op would run the same single pass plus its own call overhead.
    """

    def __init__(self, channels: int | None, alpha: float, p: float = 0.0):
        super().__init__()
        self.bn = BatchNorm(channels) if channels else None
        self.alpha, self.p = alpha, p

    def forward(self, x: torch.Tensor, segments: tuple[int, ...] | None = None,
                update_stats: bool = True, seed: torch.Tensor | None = None,
                memory_format: torch.memory_format | None = None) -> torch.Tensor:
        """``seed``: the dropout seed (a one-element int64 tensor), else one drawn per call.
        ``memory_format``: the layout the fused kernels write (None: x's); ATen's batch norm and
        leaky-ReLU keep x's."""
        p = self.p if self.training else 0.0
        if (self.bn is not None and self.bn.batch_statistics and policy(x.device).fused_batch_norm
                and not distributed.current().active):
            track, momentum = self.bn.track(update_stats)
            running = (self.bn.running_mean, self.bn.running_var) if track else (None, None)
            return K.batch_norm_leaky_relu_dropout(
                x, self.bn.weight, self.bn.bias, segments=segments, running_mean=running[0],
                running_var=running[1], momentum=momentum, eps=self.bn.eps,
                negative_slope=self.alpha, p=p, seed=seed, memory_format=memory_format)
        if self.bn is not None:
            x = self.bn.normalize(x, segments, update_stats)
        if p == 0:
            return x if self.alpha == 1 else F.leaky_relu(x, self.alpha)
        return K.leaky_relu_dropout(x, negative_slope=self.alpha, p=p, training=True, seed=seed,
                                    memory_format=memory_format)


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
        # layers that --precision bf16 leaves in fp32 (ssgan.precision.mixed_precision)
        self.fp32_layers = ("classifier",)
        # the layout the input dropout writes, conv1's input (DevicePolicy.conv_input_layout)
        self.conv_input_layout = torch.contiguous_format

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

    def features(self, x: torch.Tensor, segments: tuple[int, ...] | None = None,
                 update_stats: bool = True) -> torch.Tensor:
        """The pooled features (B, 2*size_mult) that the heads read and feature matching
        compares; x as in :meth:`forward`."""
        # one draw of every dropout seed per pass, not one launch per dropout call
        seeds = K.dropout_seeds(3, x.device) if self.training else [None] * 3
        h = self.input_dropout(x, seed=seeds[0], memory_format=self.conv_input_layout)
        h = self.act1(conv(self.conv1, h), seed=seeds[1])
        h = self.act2(conv(self.conv2, h))
        h = self.act3(conv(self.conv3, h), segments, update_stats, seeds[2])
        for layer, act in ((self.conv4, self.act4), (self.conv5, self.act5)):
            h = act(conv(layer, h), segments, update_stats)
        h = self.act7(conv(self.conv7, h))
        # at least fp32 (bf16 under autocast): feature matching compares these means
        return spatial_mean(h, K.reference.compute_dtype(h.dtype))

    def classify(self, x: torch.Tensor, segments: tuple[int, ...] | None = None,
                 update_stats: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """(class_logits, features) of :meth:`forward`, without the GAN logits (the training
        step's loss head computes them). The classifier runs in the features' precision, at
        least fp32, under autocast too: it is part of the loss head (``fp32_layers``)."""
        features = self.features(x, segments, update_stats)
        with torch.autocast(x.device.type, enabled=False):
            return self.classifier(features), features

    def forward(self, x: torch.Tensor, segments: tuple[int, ...] | None = None,
                update_stats: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``segments``: row counts of the batch's segments, each normalised by its own batch
        statistics (default: one segment); running statistics come from the first, and only
        with ``update_stats`` (False keeps generated batches out of them)."""
        class_logits, features = self.classify(x, segments, update_stats)
        # the log-sum-exp head in fp32 (at least) whatever autocast made of the logits
        head_in = class_logits.to(K.reference.compute_dtype(class_logits.dtype))
        return class_logits, K.gan_logits(head_in, extra_class=self.extra_class), features


class Generator(nn.Module):
    """The notebook's generator: dense -> (4*m, s/8, s/8) -> three 5x5 stride-2 transposed
    convolutions -> tanh. z: float (B, z_dim). Returns float (B, C, s, s) in [-1, 1], in
    ``conv_input_layout`` (channels-first unless :func:`build_models` chose the models'
    layout)."""

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
        # the layout of the dense output's batch-norm block and of the images, whatever the
        # feature maps' (DevicePolicy.conv_input_layout)
        self.conv_input_layout = torch.contiguous_format

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.dense(z).view(z.shape[0], -1, self.base, self.base)
        h = self.act0(h, memory_format=self.conv_input_layout)
        h = self.act1(deconv(self.deconv1, h))
        h = self.act2(deconv(self.deconv2, h))
        return torch.tanh(deconv(self.deconv3, h)).contiguous(
            memory_format=self.conv_input_layout)


def build_models(cfg: "TrainConfig", data: "Dataset", device: torch.device
                 ) -> tuple[Generator, Discriminator]:
    """G and D for ``cfg``'s widths and ``data``'s images and classes, on ``device`` in its
    layout at its precision (``DevicePolicy.layout``; the fused ops that feed a convolution,
    and G's images, in ``DevicePolicy.conv_input_layout``), D with ``cfg.eval_bn``'s
    evaluation mode."""
    g = Generator(cfg.z_dim, data.channels, data.image_size, cfg.g_size_mult, cfg.alpha)
    d = build_discriminator(cfg, data.channels, data.num_classes)
    layout = policy(device).layout(cfg.precision)
    g.conv_input_layout = d.conv_input_layout = policy(device).conv_input_layout(cfg.precision)
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
