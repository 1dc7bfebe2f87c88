"""The semi-supervised GAN losses of the notebook (Salimans et al. 2016)."""
from __future__ import annotations

from collections.abc import Callable

import torch

import ssgan.kernels as K


def discriminator_loss(head: dict[str, torch.Tensor], unlabeled_weight: float = 1.0,
                       entropy_weight: float = 0.0,
                       supervised_share: torch.Tensor | None = None
                       ) -> dict[str, torch.Tensor]:
    """d_loss = [``supervised_share`` *] supervised + ``unlabeled_weight`` * (bce_real +
    bce_fake) [+ ``entropy_weight`` * entropy], from the terms of
    :func:`ssgan.kernels.gan_loss_head` (``head``, by name). ``supervised_share`` rescales
    this batch's CE mean to its share of a larger batch's
    (:meth:`ssgan.distributed.Group.labeled_share`). Returns ``head`` (0-dim tensors) with
    ``d_loss`` added and ``supervised`` rescaled."""
    losses = dict(head)
    if supervised_share is not None:
        losses["supervised"] = losses["supervised"] * supervised_share
    d_loss = losses["supervised"] + unlabeled_weight * (losses["bce_real"] + losses["bce_fake"])
    if entropy_weight:
        d_loss = d_loss + entropy_weight * losses["entropy"]
    losses["d_loss"] = d_loss
    return losses


def feature_matching_loss(features_real: torch.Tensor, features_fake: torch.Tensor,
                          batch_mean: Callable[[torch.Tensor], torch.Tensor] | None = None
                          ) -> torch.Tensor:
    """Generator loss: mean |E[f(real)] - E[f(fake)]| over feature dims (the notebook's L1).

    features_*: float (B, F). E is the mean over the batch: by default this batch's, in one
    fused op (:func:`ssgan.kernels.feature_matching`); ``batch_mean``, when given, takes it
    instead (across ranks, the global batch's: :meth:`ssgan.distributed.Group.batch_mean`).
    Returns a 0-dim tensor, at least fp32."""
    if batch_mean is None:
        return K.feature_matching(features_real, features_fake)
    return (batch_mean(features_real.float()) - batch_mean(features_fake.float())).abs().mean()
