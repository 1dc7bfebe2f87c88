"""Data augmentation done on the training device, batch by batch."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ssgan import distributed


def random_translate(images: torch.Tensor, max_shift: int,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """Shifts every image by its own random (dy, dx) in [-max_shift, max_shift] pixels, filling
    the uncovered border with 0 (the standard SSL benchmarks' +-2 px translation).

    images: uint8 (or any dtype) (B, C, H, W) on any device. Returns the same shape and dtype on
    the same device, contiguous. ``max_shift=0`` returns ``images`` unchanged. Across
    torchrun's ranks (:func:`ssgan.distributed.current`), ``images`` are this rank's shard of
    a global batch of ``B * group.world``: the shifts of the whole batch are drawn and this
    rank's kept, so N ranks shift as one process would."""
    if max_shift < 0:
        raise ValueError(f"--augment-shift must be >= 0, got {max_shift}")
    if max_shift == 0:
        return images
    b, c, h, w = images.shape
    group = distributed.current()
    padded = F.pad(images, (max_shift,) * 4)
    offsets = group.shard(torch.randint(0, 2 * max_shift + 1, (2, b * group.world, 1),
                                        device=images.device, generator=generator), dim=1)
    rows = offsets[0] + torch.arange(h, device=images.device)   # (B, H)
    cols = offsets[1] + torch.arange(w, device=images.device)   # (B, W)
    batch = torch.arange(b, device=images.device)[:, None, None, None]
    channel = torch.arange(c, device=images.device)[None, :, None, None]
    # indexing every dim yields a plain contiguous (B, C, H, W) batch
    return padded[batch, channel, rows[:, None, :, None], cols[:, None, None, :]]
