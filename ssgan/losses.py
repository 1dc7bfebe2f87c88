"""The semi-supervised GAN losses of the notebook (Salimans et al. 2016)."""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

import ssgan.kernels as K


def discriminator_loss(class_logits_real: torch.Tensor, gan_logits_real: torch.Tensor,
                       gan_logits_fake: torch.Tensor, labels: torch.Tensor,
                       label_mask: torch.Tensor, unlabeled_weight: float = 1.0,
                       supervised_share: torch.Tensor | None = None
                       ) -> dict[str, torch.Tensor]:
    """d_loss = [``supervised_share`` *] masked CE on labeled real rows
    + ``unlabeled_weight`` * (BCE(real -> 1) + BCE(fake -> 0)).

    class_logits_real: (B, K[+1]); gan_logits_*: (B,) and (B',); labels: int64 (B,), any value
    where ``label_mask`` (bool (B,)) is False. ``supervised_share`` rescales this batch's CE
    mean to its share of a larger batch's (:meth:`ssgan.distributed.Group.labeled_share`).
    Returns the total and its three parts (0-dim).
    """
    supervised = K.masked_cross_entropy(class_logits_real, labels, label_mask)
    if supervised_share is not None:
        supervised = supervised * supervised_share
    real = F.binary_cross_entropy_with_logits(gan_logits_real.float(),
                                              torch.ones_like(gan_logits_real, dtype=torch.float))
    fake = F.binary_cross_entropy_with_logits(gan_logits_fake.float(),
                                              torch.zeros_like(gan_logits_fake,
                                                               dtype=torch.float))
    return {"d_loss": supervised + unlabeled_weight * (real + fake), "supervised": supervised, "bce_real": real,
            "bce_fake": fake}


def feature_matching_loss(features_real: torch.Tensor, features_fake: torch.Tensor,
                          batch_mean: Callable[[torch.Tensor], torch.Tensor] | None = None
                          ) -> torch.Tensor:
    """Generator loss: mean |E[f(real)] - E[f(fake)]| over feature dims (the notebook's L1).

    features_*: float (B, F). ``batch_mean`` takes E over the batch (default ``t.mean(0)``;
    across ranks, the global batch's mean: :meth:`ssgan.distributed.Group.batch_mean`).
    Returns a 0-dim tensor."""
    mean = batch_mean or (lambda t: t.mean(0))
    return (mean(features_real.float()) - mean(features_fake.float())).abs().mean()


def prediction_entropy(class_logits: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Mean entropy of the softmax over the first ``num_classes`` logits (the real classes):
    the conditional-entropy term of Bad GAN (Dai et al. 2017), which pushes D to confident
    predictions on unlabeled data.

    class_logits: float (B, K[+1]). Returns a 0-dim tensor, float32 (float64 for float64)."""
    logits = class_logits[:, :num_classes]
    log_p = F.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=1)
    return -(log_p.exp() * log_p).sum(1).mean()
