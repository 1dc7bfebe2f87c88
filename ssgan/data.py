"""Datasets, kept whole on the training device as uint8, and labeled-subset selection.

Every loader returns a :class:`Dataset` of uint8 (N, C, H, W) images and int64 labels (-1 for
images without a label). Batches are later drawn by on-device permutations, so training never
copies from the host after loading.
"""
from __future__ import annotations

import gzip
import hashlib
import struct
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

SVHN_URL = "http://ufldl.stanford.edu/housenumbers/"
SVHN_FILES = {"train": ("train_32x32.mat", "e26dedcc434d2e4c54c9b2d4a06d8373"),
              "test": ("test_32x32.mat", "eb5a983be6a315427106f1b164d9cef3")}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
UNLABELED = -1


class DataError(ValueError):
    """A dataset is missing, corrupt or does not fit the requested options."""


@dataclass
class Split:
    images: torch.Tensor   # uint8 (N, C, H, W)
    labels: torch.Tensor   # int64 (N,), UNLABELED (-1) where unknown

    def __len__(self) -> int:
        return self.images.shape[0]

    def to(self, device: torch.device) -> "Split":
        return Split(self.images.to(device), self.labels.to(device))


@dataclass
class Dataset:
    train: Split
    test: Split | None
    num_classes: int
    class_names: list[str] = field(default_factory=list)

    @property
    def channels(self) -> int:
        return self.train.images.shape[1]

    @property
    def image_size(self) -> int:
        return self.train.images.shape[2]

    def to(self, device: torch.device) -> "Dataset":
        return Dataset(self.train.to(device), self.test.to(device) if self.test else None,
                       self.num_classes, self.class_names)


def to_unit_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, C, H, W) -> float32 in [-1, 1], on the images' device."""
    return images.float().div_(127.5).sub_(1.0)


# ---------------------------------------------------------------- SVHN

def md5sum(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _download(url: str, dest: Path) -> None:
    tmp = dest.with_suffix(dest.suffix + ".part")
    with urllib.request.urlopen(url, timeout=30) as response:
        total = int(response.headers.get("Content-Length", 0)) or None
        with open(tmp, "wb") as f, tqdm(total=total, unit="B", unit_scale=True,
                                        desc=f"download {dest.name}") as bar:
            for chunk in iter(lambda: response.read(1 << 20), b""):
                f.write(chunk)
                bar.update(len(chunk))
    tmp.replace(dest)


def _svhn_file(data_dir: Path, split: str, download: bool, verify_md5: bool) -> Path:
    name, expected_md5 = SVHN_FILES[split]
    path = data_dir / name
    if not path.exists():
        how = (f"Download {SVHN_URL}{name} into {data_dir}, or point --data-dir at the folder "
               "that holds it")
        if not download:
            raise DataError(f"SVHN file {path} is missing (and --no-download is set). {how}.")
        data_dir.mkdir(parents=True, exist_ok=True)
        try:
            _download(SVHN_URL + name, path)
        except OSError as err:
            raise DataError(f"SVHN file {path} is missing and downloading {SVHN_URL}{name} "
                            f"failed ({err}). {how}; --no-download skips the attempt.") from None
    if verify_md5:
        actual = md5sum(path)
        if actual != expected_md5:
            raise DataError(f"{path} has MD5 {actual}, but the official file has {expected_md5}: "
                            "it is truncated, corrupt or not the official SVHN file. Delete it "
                            "and download it again, or pass --skip-md5 for your own .mat files.")
    return path


def _load_svhn_mat(path: Path) -> Split:
    import scipy.io
    try:
        mat = scipy.io.loadmat(path)
        x, y = mat["X"], mat["y"]
    except Exception as err:  # scipy raises many types for a damaged file
        raise DataError(f"{path} is not a readable SVHN .mat file ({type(err).__name__}: {err}); "
                        "delete it and download it again") from None
    if x.ndim != 4 or x.shape[:3] != (32, 32, 3) or y.reshape(-1).shape[0] != x.shape[3]:
        raise DataError(f"{path} holds X {x.shape} and y {y.shape}; expected X (32, 32, 3, N) "
                        "and y (N, 1)")
    labels = y.reshape(-1).astype(np.int64)
    if labels.min() < 1 or labels.max() > 10:
        raise DataError(f"{path} has labels outside 1..10 (found {labels.min()}..{labels.max()})")
    labels[labels == 10] = 0  # SVHN stores digit 0 as class 10
    images = torch.from_numpy(np.ascontiguousarray(x.transpose(3, 2, 0, 1)))
    return Split(images.to(torch.uint8), torch.from_numpy(labels))


def load_svhn(data_dir: str | Path, *, download: bool = True, verify_md5: bool = True) -> Dataset:
    """SVHN from ``train_32x32.mat``/``test_32x32.mat``: uint8 (N, 3, 32, 32), labels 0..9."""
    data_dir = Path(data_dir)
    train = _load_svhn_mat(_svhn_file(data_dir, "train", download, verify_md5))
    test = _load_svhn_mat(_svhn_file(data_dir, "test", download, verify_md5))
    return Dataset(train, test, 10, [str(d) for d in range(10)])


# ---------------------------------------------------------------- MNIST (IDX)

def _read_idx(path: Path, expected_ndim: int) -> np.ndarray:
    if not path.exists():
        raise DataError(f"MNIST file {path} is missing; point --data-dir at the folder holding "
                        "it, or set --mnist-train-prefix/--mnist-test-prefix to its name prefix")
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
        zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
        dims = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
        if zero != 0 or dtype_code != 0x08 or ndim != expected_ndim:
            raise ValueError(f"header says type 0x{dtype_code:02x} with {ndim} dims")
        data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
        return data.reshape(dims)
    except (OSError, EOFError, ValueError, struct.error) as err:
        raise DataError(f"{path} is not a valid gzipped IDX file ({err}); it is truncated or "
                        "corrupt: replace it") from None


def _load_mnist_split(data_dir: Path, prefix: str) -> Split:
    images = _read_idx(data_dir / f"{prefix}-images-idx3-ubyte.gz", 3)
    labels = _read_idx(data_dir / f"{prefix}-labels-idx1-ubyte.gz", 1)
    if images.shape[0] != labels.shape[0]:
        raise DataError(f"{prefix}: {images.shape[0]} images but {labels.shape[0]} labels")
    padded = np.pad(images, ((0, 0), (2, 2), (2, 2)))  # 28x28 -> 32x32, as the model expects
    return Split(torch.from_numpy(padded).unsqueeze(1).contiguous(),
                 torch.from_numpy(labels.astype(np.int64)))


def load_mnist(data_dir: str | Path, *, train_prefix: str = "train",
               test_prefix: str = "t10k") -> Dataset:
    """MNIST from IDX ``.gz`` files named ``{prefix}-images-idx3-ubyte.gz`` etc., padded to
    uint8 (N, 1, 32, 32). ``train_prefix="train-5k"`` reads the 5k subset."""
    data_dir = Path(data_dir)
    return Dataset(_load_mnist_split(data_dir, train_prefix),
                   _load_mnist_split(data_dir, test_prefix), 10, [str(d) for d in range(10)])


# ---------------------------------------------------------------- image folders

def _read_images(files: list[Path], size: int, channels: int, desc: str) -> torch.Tensor:
    from PIL import Image
    mode = "L" if channels == 1 else "RGB"
    out = np.empty((len(files), size, size, channels), dtype=np.uint8)
    for i, f in enumerate(tqdm(files, desc=desc, leave=False, disable=len(files) < 500)):
        try:
            with Image.open(f) as img:
                img = img.convert(mode).resize((size, size), Image.BILINEAR)
        except OSError as err:
            raise DataError(f"cannot read image {f} ({err}); remove or replace it") from None
        out[i] = np.asarray(img).reshape(size, size, channels)
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)


def _folder_split(root: Path, class_names: list[str], size: int, channels: int,
                  with_unlabeled: bool) -> Split:
    files, labels = [], []
    for label, name in enumerate(class_names):
        found = _image_files(root / name)
        files += found
        labels += [label] * len(found)
    if with_unlabeled and (root / "unlabeled").is_dir():
        found = _image_files(root / "unlabeled")
        files += found
        labels += [UNLABELED] * len(found)
    return Split(_read_images(files, size, channels, f"images in {root.name}"),
                 torch.tensor(labels, dtype=torch.int64))


def load_image_folder(root: str | Path, *, image_size: int = 32, channels: int = 3) -> Dataset:
    """A user's own images: ``root/<class>/*`` labeled, ``root/unlabeled/*`` unlabeled, and an
    optional ``root/test/<class>/*`` test set. Any image size; resized to ``image_size``."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist; point --data-dir at a folder with "
                        "one subfolder per class and an optional unlabeled/ subfolder")
    class_names = sorted(p.name for p in root.iterdir()
                         if p.is_dir() and p.name not in ("unlabeled", "test"))
    if not class_names:
        raise DataError(f"{root} has no class subfolders; expected {root}/<class>/*.png and "
                        f"optionally {root}/unlabeled/")
    train = _folder_split(root, class_names, image_size, channels, with_unlabeled=True)
    if len(train) == 0:
        raise DataError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) found under {root}")
    test = None
    if (root / "test").is_dir():
        extra = sorted(p.name for p in (root / "test").iterdir()
                       if p.is_dir() and p.name not in class_names)
        if extra:
            raise DataError(f"{root}/test has classes {extra} that the training folders lack")
        test = _folder_split(root / "test", class_names, image_size, channels, False)
    return Dataset(train, test, len(class_names), class_names)


def load_dataset(name: str, data_dir: str | Path, *, download: bool = True,
                 verify_md5: bool = True, mnist_train_prefix: str = "train",
                 mnist_test_prefix: str = "t10k", image_size: int = 32,
                 channels: int = 3) -> Dataset:
    """Dispatches on ``--dataset``: ``svhn``, ``mnist`` or ``folder``."""
    if name == "svhn":
        return load_svhn(data_dir, download=download, verify_md5=verify_md5)
    if name == "mnist":
        return load_mnist(data_dir, train_prefix=mnist_train_prefix,
                          test_prefix=mnist_test_prefix)
    if name == "folder":
        return load_image_folder(data_dir, image_size=image_size, channels=channels)
    raise DataError(f"--dataset must be svhn, mnist or folder, got {name!r}")


# ---------------------------------------------------------------- labeled subset

def select_labeled(labels: torch.Tensor, num_labels: int, mode: str, num_classes: int,
                   seed: int) -> torch.Tensor:
    """Indices (int64, sorted) of the examples whose labels training may use.

    ``first``: the first ``num_labels`` labeled examples (the notebook's choice).
    ``balanced``: ``num_labels / num_classes`` per class, drawn with ``seed``.
    """
    labels = labels.cpu()
    available = (labels != UNLABELED).nonzero().squeeze(1)
    if num_labels <= 0 or num_labels > available.numel():
        raise DataError(f"--labels must be in 1..{available.numel()} (the labeled training "
                        f"examples), got {num_labels}")
    if mode == "first":
        return available[:num_labels]
    if mode != "balanced":
        raise DataError(f"--label-selection must be first or balanced, got {mode!r}")
    if num_labels % num_classes:
        raise DataError(f"--labels {num_labels} is not divisible by the {num_classes} classes; "
                        "--label-selection balanced needs an equal number per class")
    per_class = num_labels // num_classes
    generator = torch.Generator().manual_seed(seed)
    chosen = []
    for c in range(num_classes):
        members = (labels == c).nonzero().squeeze(1)
        if members.numel() < per_class:
            raise DataError(f"class {c} has only {members.numel()} labeled examples, fewer than "
                            f"the {per_class} that --labels {num_labels} needs per class")
        chosen.append(members[torch.randperm(members.numel(), generator=generator)[:per_class]])
    return torch.cat(chosen).sort().values
