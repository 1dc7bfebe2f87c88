"""Datasets, kept whole on the training device as uint8, and labeled-subset selection.

Every loader returns a :class:`Dataset` of uint8 (N, C, H, W) images and int64 labels (-1 for
images without a label). Batches are later drawn by on-device permutations, so training never
copies from the host after loading.
"""
from __future__ import annotations

import functools
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image
from torchvision.datasets import folder as tv_folder
from torchvision.datasets import mnist as tv_mnist
from torchvision.datasets.utils import (calculate_md5, check_integrity, download_url,
                                        extract_archive)
from torchvision.transforms.functional import pil_to_tensor

from ssgan.errors import describe

SVHN_FILES = {split: (name, md5) for split, (_, name, md5)
              in torchvision.datasets.SVHN.split_list.items() if split != "extra"}
SVHN_URL = torchvision.datasets.SVHN.split_list["train"][0].rsplit("/", 1)[0] + "/"
MNIST_MIRRORS = torchvision.datasets.MNIST.mirrors
MNIST_MD5 = dict(torchvision.datasets.MNIST.resources)  # the official files' names -> md5
BUNDLED_MNIST = Path(__file__).parent / "bundled" / "mnist"  # 5k train subset + official test
BUNDLED_TRAIN_PREFIX = "train-5k"
DATASETS = ("svhn", "mnist", "folder")
LABEL_SELECTIONS = ("first", "balanced")
SVHN_DEFAULT_DIR = "data/svhn"
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
        return Dataset(self.train.to(device),
                       self.test.to(device) if self.test is not None else None,
                       self.num_classes, self.class_names)


def to_unit_range(images: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 (N, C, H, W) -> ``dtype`` in [-1, 1] (u / 127.5 - 1), on the images' device and
    in their layout. One launch: the 0-dim operands set the result's dtype (type promotion)
    and the arithmetic runs in fp32 at least."""
    minus_one, scale = _unit_range_operands(dtype, images.device)
    return torch.addcdiv(minus_one, images, scale)


@functools.lru_cache(maxsize=None)
def _unit_range_operands(dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, ...]:
    # made once, on the device: a CUDA graph cannot copy a host value in during its capture;
    # both exact in bf16
    return tuple(torch.tensor(v, dtype=dtype, device=device) for v in (-1.0, 127.5))


# ---------------------------------------------------------------- SVHN

class _SVHN(torchvision.datasets.SVHN):
    """torchvision's SVHN reader (MD5 check, label 10 -> 0), which with ``--skip-md5`` accepts
    a user's own .mat file under the official name."""

    def __init__(self, root: Path, split: str, verify_md5: bool):
        self.verify_md5 = verify_md5
        super().__init__(str(root), split=split)

    def _check_integrity(self) -> bool:
        path = Path(self.root) / self.filename
        return check_integrity(str(path), self.file_md5 if self.verify_md5 else None)


def _svhn_split(data_dir: Path, split: str, download: bool, verify_md5: bool) -> Split:
    name, md5 = SVHN_FILES[split]
    path = data_dir / name
    how = (f"Download {SVHN_URL}{name} into {data_dir}, or point --data-dir at the folder "
           "that holds it")
    if not path.exists():
        if not download:
            raise DataError(f"SVHN file {path} is missing (and --no-download is set). {how}.")
        try:
            download_url(SVHN_URL + name, str(data_dir), name)  # with a progress bar
        except OSError as err:  # URLError, HTTPError, a full disk ...
            path.unlink(missing_ok=True)
            raise DataError(f"SVHN file {path} is missing and downloading {SVHN_URL}{name} "
                            f"failed ({err}). {how}; --no-download skips the attempt.") from None
    try:
        ds = _SVHN(data_dir, split, verify_md5)
    except RuntimeError:  # torchvision: "not found or corrupted", i.e. the MD5 differs
        raise DataError(f"{path} has MD5 {calculate_md5(str(path))}, but the official file has "
                        f"{md5}: it is truncated, corrupt or not the official SVHN file. Delete "
                        "it and download it again, or pass --skip-md5 for your own .mat "
                        "files.") from None
    except Exception as err:  # scipy raises many types for a damaged file, numpy for a bad layout
        raise DataError(f"{path} is not a readable SVHN .mat file ({type(err).__name__}: {err}); "
                        "expected X (32, 32, 3, N) and y (N, 1); delete it and download it "
                        "again, or point --data-dir at a good copy") from None
    if ds.data.shape[1:] != (3, 32, 32) or ds.labels.shape != (ds.data.shape[0],):
        raise DataError(f"{path} holds images {ds.data.shape[1:]} and {ds.labels.shape} labels; "
                        "expected X (32, 32, 3, N) and y (N, 1)")
    labels = torch.from_numpy(ds.labels)
    if len(labels) and (labels.min() < 0 or labels.max() > 9):
        # torchvision has mapped the file's 10 (digit 0) to 0 by now: 0..9 are the digits
        raise DataError(f"{path} has labels outside 1..10 (found {int(labels.min())}.."
                        f"{int(labels.max())} after mapping 10, the digit 0, to 0): it is not "
                        "an SVHN label file; replace it, or point --data-dir at a good copy")
    return Split(torch.from_numpy(ds.data).to(torch.uint8).contiguous(), labels)


def load_svhn(data_dir: str | Path, *, download: bool = True, verify_md5: bool = True) -> Dataset:
    """SVHN from ``train_32x32.mat``/``test_32x32.mat``: uint8 (N, 3, 32, 32), labels 0..9."""
    data_dir = Path(data_dir)
    return Dataset(*(_svhn_split(data_dir, split, download, verify_md5)
                     for split in ("train", "test")), 10, [str(d) for d in range(10)])


# ---------------------------------------------------------------- MNIST (IDX)

def _read_idx(path: Path, reader) -> torch.Tensor:
    """An IDX file, gzipped or not, through torchvision's reader."""
    if not path.exists():
        raise DataError(f"MNIST file {path} is missing; point --data-dir at the folder holding "
                        "it, or set --mnist-train-prefix/--mnist-test-prefix to its name prefix")
    try:
        if path.suffix != ".gz":
            return reader(str(path))
        with tempfile.TemporaryDirectory() as tmp:
            return reader(extract_archive(str(path), tmp))
    except (OSError, EOFError, ValueError, AssertionError, RuntimeError) as err:
        raise DataError(f"{path} is not a valid IDX file ({type(err).__name__}: {err}); it is "
                        "truncated or corrupt: replace it, or point --data-dir at a good "
                        "copy") from None


def _download_mnist_file(data_dir: Path, name: str) -> None:
    """Fetches an official MNIST file (with a progress bar and MD5 check), trying each of
    torchvision's mirrors."""
    errors = []
    for mirror in MNIST_MIRRORS:
        try:
            download_url(mirror + name, str(data_dir), name, MNIST_MD5[name])
            return
        except (OSError, RuntimeError) as err:  # URLError, HTTPError, an MD5 mismatch ...
            (data_dir / name).unlink(missing_ok=True)
            errors.append(f"{mirror}: {err}")
    raise DataError(f"MNIST file {data_dir / name} is missing and downloading it failed "
                    f"({'; '.join(errors)}). Put the official file there, point --data-dir at "
                    "the folder holding it, or drop --data-dir to train on the bundled "
                    "5k subset") from None


def _mnist_split(data_dir: Path, prefix: str, download: bool) -> Split:
    def find(kind: str) -> Path:
        raw = data_dir / f"{prefix}-{kind}"
        gz = raw.with_name(raw.name + ".gz")
        if not raw.exists() and not gz.exists() and download and gz.name in MNIST_MD5:
            _download_mnist_file(data_dir, gz.name)
        return raw if raw.exists() else gz
    images = _read_idx(find("images-idx3-ubyte"), tv_mnist.read_image_file)
    labels = _read_idx(find("labels-idx1-ubyte"), tv_mnist.read_label_file)
    if images.shape[0] != labels.shape[0]:
        raise DataError(f"{prefix}: {images.shape[0]} images but {labels.shape[0]} labels")
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2))  # 28x28 -> 32x32, as the model expects
    return Split(padded.unsqueeze(1).contiguous(), labels.long())


def load_mnist(data_dir: str | Path | None = None, *, train_prefix: str | None = None,
               test_prefix: str = "t10k", download: bool = True) -> Dataset:
    """MNIST from IDX files named ``{prefix}-images-idx3-ubyte[.gz]`` etc., padded to uint8
    (N, 1, 32, 32).

    Without ``data_dir``: the bundled 5k training subset and the official test set. With it:
    the files there, ``train_prefix`` defaulting to ``train`` (the official 60k); missing
    official files are downloaded when ``download``."""
    data_dir, train_prefix = default_location("mnist", data_dir or "", train_prefix or "")
    data_dir = Path(data_dir)
    return Dataset(_mnist_split(data_dir, train_prefix, download),
                   _mnist_split(data_dir, test_prefix, download), 10,
                   [str(d) for d in range(10)])


# ---------------------------------------------------------------- image folders

SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def _eight_bit(image: Image.Image) -> Image.Image:
    """A 16-bit grayscale image scaled to 8 bits (Pillow's own conversion clips every value
    above 255 to white); any other image as it is."""
    if image.mode not in SIXTEEN_BIT_MODES:
        return image
    values = np.asarray(image).astype(np.int64)
    if values.min() < 0 or values.max() > 65535:
        raise ValueError(f"{image.mode} pixel values span {values.min()}..{values.max()}, "
                         "outside 16 bits")
    return Image.fromarray((values >> 8).astype(np.uint8), mode="L")


def open_image(path: str | Path, fix: str = "remove or replace it") -> Image.Image:
    """A still image file, decoded (16-bit grayscale scaled to 8 bits), or a DataError that
    names it, says what is wrong and ``fix``: unreadable, truncated or corrupt files,
    animated images (which frame would be meant?) and images beyond Pillow's
    decompression-bomb limit."""
    try:
        image = Image.open(path)
        frames = getattr(image, "n_frames", 1)
        if frames > 1:
            raise DataError(f"image {path} is animated ({frames} frames), and ssgan reads still "
                            f"images: save the frame you mean as a file of its own, or {fix}")
        image.load()
        return _eight_bit(image)
    except DataError:
        raise
    except Image.DecompressionBombError as err:
        size = str(err).split(", could be")[0]
        raise DataError(f"image {path} is too large to decode safely ({size}); {fix}") from None
    except Exception as err:  # Pillow's decoders raise OSError, SyntaxError, ValueError, ...
        raise DataError(f"cannot read image {path} ({describe(err)}); {fix}") from None


def image_to_uint8(image: Image.Image, size: int, channels: int) -> torch.Tensor:
    """An image as image folders are read: converted to ``channels`` (1: grayscale, 3: RGB),
    resized to ``size`` x ``size`` with bilinear filtering; uint8 (channels, size, size)."""
    image = image.convert("L" if channels == 1 else "RGB")
    if image.size != (size, size):
        image = image.resize((size, size), Image.BILINEAR)
    return pil_to_tensor(image)


def _read_images(samples: list[tuple[str, int]], size: int, channels: int) -> Split:
    """torchvision's image loader, converted to ``channels`` and resized to ``size``."""
    images = torch.empty(len(samples), channels, size, size, dtype=torch.uint8)
    for i, (path, _) in enumerate(samples):
        images[i] = image_to_uint8(open_image(path), size, channels)
    return Split(images, torch.tensor([label for _, label in samples], dtype=torch.int64))


def _class_folders(root: Path) -> list[str]:
    try:
        return tv_folder.find_classes(str(root))[0]
    except FileNotFoundError:  # torchvision's answer for a folder without subfolders
        return []


def _scan(root: Path, class_to_idx: dict[str, int]) -> list[tuple[str, int]]:
    """torchvision's folder scan (its image extensions), classes in ``class_to_idx`` order."""
    return tv_folder.make_dataset(str(root), class_to_idx, tv_folder.IMG_EXTENSIONS,
                                  allow_empty=True)


def load_image_folder(root: str | Path, *, image_size: int = 32, channels: int = 3) -> Dataset:
    """A user's own images: ``root/<class>/*`` labeled, ``root/unlabeled/*`` unlabeled, and an
    optional ``root/test/<class>/*`` test set. Any image size; resized to ``image_size``."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist; point --data-dir at a folder with "
                        "one subfolder per class and an optional unlabeled/ subfolder")
    class_names = [c for c in _class_folders(root) if c not in ("unlabeled", "test")]
    if not class_names:
        raise DataError(f"{root} has no class subfolders; expected {root}/<class>/*.png and "
                        f"optionally {root}/unlabeled/")
    class_to_idx = {name: i for i, name in enumerate(class_names)}
    samples = _scan(root, class_to_idx)
    empty = sorted(set(class_names) - {class_names[label] for _, label in samples})
    if empty:
        plural = len(empty) > 1
        raise DataError(f"class folder{'s' if plural else ''} "
                        f"{', '.join(str(root / c) for c in empty)} hold{'' if plural else 's'} "
                        f"no images ({', '.join(tv_folder.IMG_EXTENSIONS)}): a class without "
                        "examples can never be learned; add images or remove the folder")
    if (root / "unlabeled").is_dir():
        samples += _scan(root, {"unlabeled": UNLABELED})
    if not samples:
        raise DataError(f"no images ({', '.join(tv_folder.IMG_EXTENSIONS)}) found under {root}")
    test = None
    if (root / "test").is_dir():
        extra = sorted(set(_class_folders(root / "test")) - set(class_names))
        if extra:
            raise DataError(f"{root}/test has classes {extra} that the training folders lack")
        test = _read_images(_scan(root / "test", class_to_idx), image_size, channels)
    return Dataset(_read_images(samples, image_size, channels), test, len(class_names),
                   class_names)


def default_location(name: str, data_dir: str, mnist_train_prefix: str) -> tuple[str, str]:
    """The folder and MNIST training-file prefix a dataset reads, where ``data_dir`` or the
    prefix is empty: the bundled MNIST subset (prefix ``train-5k``), ``train`` (the official
    60k) in a given MNIST folder, ``data/svhn`` for SVHN."""
    if name == "mnist" and not data_dir:
        return str(BUNDLED_MNIST), mnist_train_prefix or BUNDLED_TRAIN_PREFIX
    if name == "mnist":
        return data_dir, mnist_train_prefix or "train"
    if name == "svhn":
        return data_dir or SVHN_DEFAULT_DIR, mnist_train_prefix
    return data_dir, mnist_train_prefix


def load_dataset(name: str, data_dir: str | Path | None = None, *, download: bool = True,
                 verify_md5: bool = True, mnist_train_prefix: str | None = None,
                 mnist_test_prefix: str = "t10k", image_size: int = 32,
                 channels: int = 3) -> Dataset:
    """Dispatches on ``--dataset``: ``svhn``, ``mnist`` or ``folder``. An empty ``data_dir``
    means the dataset's default (:func:`default_location`)."""
    if name == "svhn":
        return load_svhn(default_location("svhn", str(data_dir or ""), "")[0], download=download,
                         verify_md5=verify_md5)
    if name == "mnist":
        return load_mnist(data_dir or None, train_prefix=mnist_train_prefix or None,
                          test_prefix=mnist_test_prefix, download=download)
    if name == "folder":
        if not data_dir:
            raise DataError("--dataset folder needs --data-dir: a folder with one subfolder "
                            "per class and an optional unlabeled/ subfolder")
        return load_image_folder(data_dir, image_size=image_size, channels=channels)
    raise DataError(f"--dataset must be svhn, mnist or folder, got {name!r}")


def check_labels(data: Dataset) -> None:
    """Checks every label once, when the data loads: training labels in [0, classes) or -1
    (unlabeled), test labels in [0, classes). Training then needs no per-step check."""
    for split, name, lowest in ((data.train, "training", UNLABELED), (data.test, "test", 0)):
        if split is None or not len(split):
            continue
        low, high = int(split.labels.min()), int(split.labels.max())
        if low < lowest or high >= data.num_classes:
            raise DataError(f"the {name} labels span {low}..{high}, but the dataset has "
                            f"{data.num_classes} classes: expected 0..{data.num_classes - 1}"
                            + (" or -1 for unlabeled images" if lowest < 0 else "")
                            + "; fix the label files or the class folders")


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
        chosen = available[:num_labels]
        classes = labels[chosen].unique()
        if num_labels > 1 and num_classes > 1 and classes.numel() == 1:
            raise DataError(f"the first {num_labels} labeled images are all of class "
                            f"{int(classes[0])}: the training set is sorted by class (as the "
                            "bundled MNIST subset is); use --label-selection balanced")
        return chosen
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
