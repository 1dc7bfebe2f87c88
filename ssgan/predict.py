"""``ssgan predict``: classify image files with a trained run's classifier, into a CSV."""
from __future__ import annotations

import csv
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import torch
from torchvision.datasets.folder import IMG_EXTENSIONS
from tqdm.auto import tqdm

from ssgan.classifier import load_classifier
from ssgan.data import DataError, open_image


def image_files(paths: Iterable[str | Path]) -> list[Path]:
    """Files named directly, and every file with one of torchvision's image extensions under
    the folders named (recursively, sorted), in the order given."""
    found: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found += sorted(p for p in path.rglob("*")
                            if p.is_file() and p.suffix.lower() in IMG_EXTENSIONS)
        elif path.is_file():
            found.append(path)
        else:
            raise DataError(f"{path} is neither an image file nor a folder")
    if not found:
        raise DataError(f"no images ({', '.join(IMG_EXTENSIONS)}) under "
                        f"{', '.join(map(str, paths))}")
    return found


def predict(checkpoint: str | Path, inputs: Iterable[str | Path], out: str | Path, *,
            batch_size: int = 256, device: str = "auto", skip_unreadable: bool = False,
            progress: bool = True) -> dict:
    """Writes ``out``: one row per image, ``path,prediction,confidence`` and one probability
    column per class, named after the class. Returns a summary: images, skipped (paths),
    out, and the count of each predicted class."""
    if batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {batch_size}")
    loaded = load_classifier(checkpoint, device=device)
    dev = next(loaded.model.parameters()).device
    files = image_files(inputs)
    rows, skipped = [], []
    batch: list[tuple[Path, torch.Tensor]] = []

    def flush() -> None:
        x = torch.stack([t for _, t in batch]).to(dev)
        with torch.no_grad():
            probs = torch.softmax(loaded.model(x).float(), dim=1).cpu()
        for (path, _), p in zip(batch, probs):
            rows.append([str(path), loaded.class_names[int(p.argmax())], float(p.max()),
                         *map(float, p)])
        batch.clear()

    for path in tqdm(files, desc="predict", unit="img", disable=not progress):
        try:
            image = open_image(path, fix="remove it or pass --skip-unreadable")
            batch.append((path, loaded.transform(image)))
        except DataError:
            if not skip_unreadable:
                raise
            skipped.append(str(path))
            continue
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "prediction", "confidence", *loaded.class_names])
        writer.writerows(rows)
    counts = Counter(row[1] for row in rows)
    return {"images": len(rows), "skipped": skipped, "out": str(out),
            "counts": {name: counts[name] for name in loaded.class_names if counts[name]}}
