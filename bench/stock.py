"""The baseline: the models and training step written with stock PyTorch, as a user would
write them (``nn.BatchNorm2d``, ``F.leaky_relu``, ``F.dropout``, ``torch.logsumexp``,
``F.cross_entropy``), with the same layers, hyper-parameters and simultaneous update as
:class:`ssgan.train.Trainer`, for the notebook's recipe and the improved one (a separate
labeled batch for the supervised term, the entropy term, translated real images and a weight
average of D). Every speed ratio is taken against this and its ``torch.compile``, never
against ssgan's own reference twins.

Where the improved step needs what is not the subject of a comparison (drawing the labeled
batch, the translation, the weight average) it calls the trainer's own helpers, so both steps
pay the same for them. A stock user runs D once per batch, and every pass moves the
BatchNorm running statistics (``nn.BatchNorm2d``'s default).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ssgan.averaging import WeightAverage
from ssgan.kernels._private_api import no_buffer_donation
from ssgan.models import BN_EPS
from ssgan.precision import autocast
from ssgan.train import Trainer, adam, simultaneous_update


class StockDiscriminator(nn.Module):
    """Same layers as :class:`ssgan.models.Discriminator`, in stock modules."""

    def __init__(self, in_channels=3, num_classes=10, size_mult=64, drop_rate=0.5, alpha=0.2):
        super().__init__()
        m = size_mult
        self.alpha, self.drop_rate = alpha, drop_rate
        self.conv1 = nn.Conv2d(in_channels, m, 3, 2, 1)
        self.conv2 = nn.Conv2d(m, m, 3, 2, 1)
        self.conv3 = nn.Conv2d(m, m, 3, 2, 1)
        self.bn3 = nn.BatchNorm2d(m, eps=BN_EPS)
        self.conv4 = nn.Conv2d(m, 2 * m, 3, 1, 1)
        self.bn4 = nn.BatchNorm2d(2 * m, eps=BN_EPS)
        self.conv5 = nn.Conv2d(2 * m, 2 * m, 3, 1, 1)
        self.bn5 = nn.BatchNorm2d(2 * m, eps=BN_EPS)
        self.conv7 = nn.Conv2d(2 * m, 2 * m, 3, 1, 0)
        self.classifier = nn.Linear(2 * m, num_classes)

    def forward(self, x):
        act = lambda h: F.leaky_relu(h, self.alpha)
        drop = lambda h, p: F.dropout(h, p, self.training)
        h = drop(x, self.drop_rate / 2.5)
        h = drop(act(self.conv1(h)), self.drop_rate)
        h = act(self.conv2(h))
        h = drop(act(self.bn3(self.conv3(h))), self.drop_rate)
        h = act(self.bn4(self.conv4(h)))
        h = act(self.bn5(self.conv5(h)))
        h = act(self.conv7(h))
        features = h.mean(dim=(2, 3))
        class_logits = self.classifier(features)
        return class_logits, gan_logits(class_logits, extra_class=False), features


class StockGenerator(nn.Module):
    """Same layers as :class:`ssgan.models.Generator`, in stock modules."""

    def __init__(self, z_dim=100, out_channels=3, image_size=32, size_mult=32, alpha=0.2):
        super().__init__()
        m, self.base, self.alpha = size_mult, image_size // 8, alpha
        self.dense = nn.Linear(z_dim, self.base * self.base * 4 * m)
        self.bn0 = nn.BatchNorm2d(4 * m, eps=BN_EPS)
        self.deconv1 = nn.ConvTranspose2d(4 * m, 2 * m, 5, 2, 2, 1)
        self.bn1 = nn.BatchNorm2d(2 * m, eps=BN_EPS)
        self.deconv2 = nn.ConvTranspose2d(2 * m, m, 5, 2, 2, 1)
        self.bn2 = nn.BatchNorm2d(m, eps=BN_EPS)
        self.deconv3 = nn.ConvTranspose2d(m, out_channels, 5, 2, 2, 1)

    def forward(self, z):
        act = lambda h: F.leaky_relu(h, self.alpha)
        h = self.dense(z).view(z.shape[0], -1, self.base, self.base)
        h = act(self.bn0(h))
        h = act(self.bn1(self.deconv1(h)))
        h = act(self.bn2(self.deconv2(h)))
        return torch.tanh(self.deconv3(h))


def masked_cross_entropy(logits, labels, mask):
    """The notebook's supervised term: CE summed over labeled rows / max(1, labeled rows)."""
    ce = F.cross_entropy(logits, labels.clamp_min(0), reduction="none")
    m = mask.to(ce.dtype)
    return (ce * m).sum() / m.sum().clamp_min(1.0)


def gan_logits(class_logits, extra_class):
    """The GAN logit: log-sum-exp of the class logits, less the fake class's with one."""
    if extra_class:
        return torch.logsumexp(class_logits[:, :-1], 1) - class_logits[:, -1]
    return torch.logsumexp(class_logits, 1)


def batch_norm_leaky_relu_dropout(x, weight, bias, running_mean, running_var, momentum, eps,
                                  negative_slope, p):
    """A BatchNorm in training (``nn.BatchNorm2d``'s call), ``F.leaky_relu``, ``F.dropout``."""
    y = F.batch_norm(x, running_mean, running_var, weight, bias, True, momentum, eps)
    return F.dropout(F.leaky_relu(y, negative_slope), p, training=True)


def gan_loss_head(class_logits, target, mask, segments, extra_class):
    """The six terms of :func:`ssgan.kernels.gan_loss_head` (supervised CE, the two BCEs, the
    real rows' entropy, hits, labeled rows) from the rows of ``segments`` (real, fake[,
    labeled]), in the logits' dtype."""
    z = class_logits
    real, fake = z[:segments[0]], z[segments[0]:segments[0] + segments[1]]
    sup = z[segments[0] + segments[1]:] if len(segments) == 3 else real
    k = z.shape[1] - int(extra_class)
    w = mask.to(z.dtype)
    ce = F.cross_entropy(sup, target.clamp(0, z.shape[1] - 1), reduction="none")
    supervised = (torch.where(w != 0, ce, 0.0) * w).sum() / w.sum().clamp_min(1)
    bce_real = F.binary_cross_entropy_with_logits(gan_logits(real, extra_class),
                                                  torch.ones_like(real[:, 0]))
    bce_fake = F.binary_cross_entropy_with_logits(gan_logits(fake, extra_class),
                                                  torch.zeros_like(fake[:, 0]))
    log_p = F.log_softmax(real[:, :k], 1)
    entropy = -(log_p.exp() * log_p).sum(1).mean()
    hits = ((sup[:, :k].argmax(1) == target) & (w != 0)).sum().to(z.dtype)
    return torch.stack([supervised, bce_real, bce_fake, entropy, hits, w.sum()])


def feature_matching(features_real, features_fake):
    """The generator's loss: mean |E[f(real)] - E[f(fake)]| over the features."""
    return (features_real.mean(0) - features_fake.mean(0)).abs().mean()


def stock_models(trainer: Trainer, compile_mode: str | None = None, channels_last: bool = False,
                 trainer_optimizers: bool = False) -> tuple[nn.Module, nn.Module]:
    """Stock G and D shaped like ``trainer``'s, on its device, optionally ``torch.compile``d
    (``compile_mode``: ``"default"``, ``"reduce-overhead"``, ...) or in the channels-last
    layout. ``trainer``'s optimizers are rebuilt over their parameters: PyTorch's default
    Adam, as a user writes it, or with ``trainer_optimizers`` the trainer's own
    (:func:`ssgan.train.adam`, reading ``trainer.lr``), which a CUDA graph can capture."""
    cfg, data = trainer.cfg, trainer.data
    g = StockGenerator(cfg.z_dim, data.channels, data.image_size, cfg.g_size_mult, cfg.alpha)
    d = StockDiscriminator(data.channels, data.num_classes, cfg.d_size_mult, cfg.drop_rate,
                           cfg.alpha)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    g = g.to(trainer.device, memory_format=layout)
    d = d.to(trainer.device, memory_format=layout)
    if channels_last:
        trainer.data.train.images = trainer.data.train.images.contiguous(memory_format=layout)
    if trainer_optimizers:
        trainer.opt_g = adam(g.parameters(), trainer.lr, cfg.beta1)
        trainer.opt_d = adam(d.parameters(), trainer.lr, cfg.beta1)
    else:
        trainer.opt_g = torch.optim.Adam(g.parameters(), lr=cfg.lr, betas=(cfg.beta1, 0.999))
        trainer.opt_d = torch.optim.Adam(d.parameters(), lr=cfg.lr, betas=(cfg.beta1, 0.999))
    # the improved recipe averages D's weights, as the trainer does (the same helper)
    trainer.d_ema = WeightAverage(d, cfg.ema_decay) if cfg.ema_decay else None
    if compile_mode is not None:
        g, d = torch.compile(g, mode=compile_mode), torch.compile(d, mode=compile_mode)
    return g, d


def stock_step(trainer: Trainer, g: nn.Module, d: nn.Module, idx: torch.Tensor,
               precision: str = "fp32") -> dict:
    """One simultaneous update of stock D and G, as :meth:`Trainer.step` does it; with
    ``precision="bf16"`` the forward runs under ``torch.autocast`` in bfloat16, the one line
    a user adds for mixed precision.

    The update differentiates D's graph twice (``retain_graph=True``), which AOTAutograd
    refuses once it donates buffers; its error tells the user to turn donation off, which is
    what a user would do, so the step runs without it (for this step only, not the process)."""
    with no_buffer_donation():
        with autocast(precision, trainer.device):
            d_loss, g_loss = _stock_losses(trainer, g, d, idx)
        simultaneous_update(d_loss, g_loss, d, g, trainer.opt_d, trainer.opt_g)
        if trainer.d_ema is not None:
            trainer.d_ema.update(d)
        return {"d_loss": d_loss, "g_loss": g_loss}


def _stock_losses(trainer: Trainer, g: nn.Module, d: nn.Module, idx: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    cfg = trainer.cfg
    real = trainer._real_images(idx)
    fake = g(torch.rand(cfg.batch_size, cfg.z_dim, device=trainer.device) * 2 - 1)
    class_real, gan_real, feat_real = d(real)
    _, gan_fake, feat_fake = d(fake)
    if cfg.labeled_batch_size:   # Improved GAN: a labeled batch for the supervised term
        extra = trainer._labeled_batch(cfg.labeled_batch_size)
        class_sup, _, _ = d(trainer._real_images(extra))
        supervised = F.cross_entropy(class_sup, trainer.train_labels[extra])
    else:
        labels = trainer.train_labels[idx]
        supervised = masked_cross_entropy(class_real, labels, labels >= 0)
    d_loss = (supervised
              + F.binary_cross_entropy_with_logits(gan_real, torch.ones_like(gan_real))
              + F.binary_cross_entropy_with_logits(gan_fake, torch.zeros_like(gan_fake)))
    if cfg.entropy_weight:
        log_p = F.log_softmax(class_real, dim=1)
        d_loss = d_loss + cfg.entropy_weight * -(log_p.exp() * log_p).sum(1).mean()
    g_loss = feature_matching(feat_real, feat_fake)
    return d_loss, g_loss
