"""PNG outputs: sample grids and accuracy curves."""
from __future__ import annotations

import math
from pathlib import Path

import torch
from torchvision.utils import save_image


def image_grid(images: torch.Tensor, path: str | Path, nrow: int | None = None) -> Path:
    """Saves float images (N, C, H, W) in [-1, 1] as one PNG grid; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    nrow = nrow or max(1, math.ceil(math.sqrt(images.shape[0])))
    save_image(images.detach().float().cpu(), path, nrow=nrow, normalize=True,
               value_range=(-1, 1))
    return path


def accuracy_curves(history: list[dict], path: str | Path, title: str = "") -> Path:
    """Train/test accuracy per epoch from metrics rows, as a PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    measured = [row for row in history if math.isfinite(float(row["test_accuracy"]))
                or math.isfinite(float(row["train_accuracy"]))]  # --eval-every skips epochs
    epochs = [row["epoch"] for row in measured]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    ax.plot(epochs, [row["train_accuracy"] for row in measured], ".-", label="train (labeled)")
    ax.plot(epochs, [row["test_accuracy"] for row in measured], ".-", label="test")
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
