"""The semi-supervised GAN losses of the notebook (Salimans et al. 2016)."""
from __future__ import annotations

from collections.abc import Callable

import torch

import ssgan.kernels as K


def head_weights(unlabeled_weight: float = 1.0, entropy_weight: float = 0.0,
                 device: torch.device | str | None = None) -> torch.Tensor:
    """Each term's weight in d_loss, float32 (6,) in the order of the terms of
    :func:`ssgan.kernels.gan_loss_head` (``reference.HEAD_OUTPUTS``): 1 for the supervised
    CE, ``unlabeled_weight`` for both BCEs, ``entropy_weight`` for the entropy, 0 for the
    counts. Made once per run, on ``device``: a CUDA graph replays its reads."""
    weight = {"supervised": 1.0, "bce_real": unlabeled_weight, "bce_fake": unlabeled_weight,
              "entropy": entropy_weight}
    return torch.tensor([weight.get(name, 0.0) for name in K.reference.HEAD_OUTPUTS],
                        device=device)


def discriminator_loss(head: torch.Tensor, weights: torch.Tensor,
                       supervised_share: torch.Tensor | None = None
                       ) -> dict[str, torch.Tensor]:
    """d_loss = [``supervised_share`` *] supervised + unlabeled_weight * (bce_real + bce_fake)
    + entropy_weight * entropy, from ``head``, the (6,) float32 terms of
    :func:`ssgan.kernels.gan_loss_head`, and ``weights``, :func:`head_weights` of those two
    weights, as one dot product: one launch each way, where summing the terms picked out of
    ``head`` costs a launch per term and a stack in the backward. ``supervised_share``
    rescales this batch's CE mean to its share of a larger batch's
    (:meth:`ssgan.distributed.Group.labeled_share`). Returns the terms by name (detached:
    they are reported, not differentiated), the supervised one rescaled, and ``d_loss``."""
    losses = dict(zip(K.reference.HEAD_OUTPUTS, head.detach()))
    d_loss = torch.dot(head, weights)
    if supervised_share is not None:
        losses["supervised"] = losses["supervised"] * supervised_share
        d_loss = d_loss + (supervised_share - 1) * head[0]
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
