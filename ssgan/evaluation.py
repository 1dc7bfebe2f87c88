"""Accuracy of a discriminator, with the BatchNorm statistics the run chose for evaluation, and
``ssgan eval`` on a saved checkpoint."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from ssgan import checkpoints, distributed
from ssgan.config import TrainConfig, load_data
from ssgan.data import to_unit_range
from ssgan.devices import resolve_device
from ssgan.models import Discriminator, build_models


def eval_batch_size(cfg: TrainConfig) -> int:
    """Batch statistics depend on the batch, so ``--eval-bn batch`` evaluates at the training
    batch size; the other modes use the larger ``--eval-batch-size``."""
    return cfg.batch_size if cfg.eval_bn == "batch" else cfg.eval_batch_size


@contextlib.contextmanager
def eval_bn_statistics(d: Discriminator, cfg: TrainConfig,
                       train_images: torch.Tensor) -> Iterator[None]:
    """The BatchNorm statistics evaluation uses, for the duration of a block.

    ``--eval-bn recalibrated`` re-estimates D's statistics on all real training images (uint8
    (N, C, H, W)) with dropout off, then restores the training-time running statistics, so
    that checkpoints (and ``ssgan eval --eval-bn running``) keep them. A no-op for the other
    modes. Across torchrun's ranks each rank passes its shard of every batch, and the
    BatchNorm sums the ranks' statistics, so every rank gets the one-process estimate."""
    if cfg.eval_bn != "recalibrated":
        yield
        return
    saved = {name: buf.clone() for name, buf in d.named_buffers()}
    bs, group = cfg.eval_batch_size, distributed.current()
    d.recalibrate_bn(to_unit_range(group.shard(train_images[i:i + bs]))
                     for i in range(0, train_images.shape[0], bs))
    try:
        yield
    finally:
        with torch.no_grad():
            for name, buf in d.named_buffers():
                buf.copy_(saved[name])


@torch.no_grad()
def accuracy(d: Discriminator, images: torch.Tensor, labels: torch.Tensor,
             batch_size: int, num_classes: int) -> float:
    """Top-1 accuracy of D's real-class logits (dropout off); images uint8 (N, C, H, W),
    labels int64 (N,). Across torchrun's ranks each rank scores its shard of every batch and
    the counts are summed, so every rank returns the accuracy on all ``images``."""
    was_training = d.training
    d.eval()
    group = distributed.current()
    correct = torch.zeros((), dtype=torch.int64, device=images.device)
    for start in range(0, images.shape[0], batch_size):
        batch = slice(start, start + batch_size)
        logits, _, _ = d(to_unit_range(group.shard(images[batch])))
        pred = logits[:, :num_classes].argmax(1)
        correct += (pred == group.shard(labels[batch])).sum()
    d.train(was_training)
    return group.sum_(correct).item() / max(1, images.shape[0])


def evaluate_checkpoint(path: str | Path, *, device: str = "auto",
                        eval_bn: str | None = None, data_dir: str | None = None
                        ) -> dict[str, Any]:
    """Test accuracy of a checkpoint's discriminator on its run's dataset; ``eval_bn`` and
    ``data_dir`` override the run's settings. Returns a JSON-ready dict."""
    dev = resolve_device(device)
    state = checkpoints.load(path)
    cfg = checkpoints.train_config(state, path)
    cfg.eval_bn = eval_bn or cfg.eval_bn
    cfg.data_dir = data_dir or cfg.data_dir
    data = load_data(cfg, download=False)
    if data.test is None or not len(data.test):
        raise ValueError(f"{cfg.data_dir} has no test set to evaluate on (for --dataset folder, "
                         "add a test/<class>/ folder)")
    data = data.to(dev)
    with checkpoints.building_from(checkpoints.resolve(path)):
        _, d = build_models(cfg, data, dev)
        d.load_state_dict(checkpoints.ema_weights(state) or state["discriminator"])
    with eval_bn_statistics(d, cfg, data.train.images):
        acc = accuracy(d, data.test.images, data.test.labels, eval_batch_size(cfg),
                       data.num_classes)
    return {"checkpoint": str(checkpoints.resolve(path)), "epoch": state["epoch"],
            "eval_bn": cfg.eval_bn, "test_examples": len(data.test), "test_accuracy": acc}
