"""PNG outputs: sample grids and accuracy curves."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch


def image_grid(images: torch.Tensor, path: str | Path, nrow: int | None = None) -> Path:
    """Saves float images (N, C, H, W) in [-1, 1] as one PNG grid; returns the path."""
    from PIL import Image
    images = images.detach().float().cpu().clamp(-1, 1)
    n, c, h, w = images.shape
    nrow = nrow or max(1, int(math.ceil(math.sqrt(n))))
    ncol = int(math.ceil(n / nrow))
    pad = 2
    grid = np.zeros((ncol * (h + pad) + pad, nrow * (w + pad) + pad, c), dtype=np.uint8)
    pixels = ((images + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    for i in range(n):
        r, col = divmod(i, nrow)
        y, x = pad + r * (h + pad), pad + col * (w + pad)
        grid[y:y + h, x:x + w] = pixels[i]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid[:, :, 0] if c == 1 else grid).save(path)
    return path


def accuracy_curves(history: list[dict], path: str | Path, title: str = "") -> Path:
    """Train/test accuracy per epoch from metrics rows, as a PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    epochs = [row["epoch"] for row in history]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    ax.plot(epochs, [row["train_accuracy"] for row in history], label="train (labeled)")
    ax.plot(epochs, [row["test_accuracy"] for row in history], label="test")
    ax.set_xlabel("epoch")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(title or "accuracy")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
