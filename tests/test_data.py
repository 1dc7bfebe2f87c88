import gzip
import struct
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image
from torchvision.datasets.utils import calculate_md5

from ssgan import data as D

SHARED_MNIST = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "mnist"


def write_svhn(folder: Path, n_train: int = 30, n_test: int = 20, seed: int = 0) -> dict:
    """Small synthetic SVHN files in the official .mat layout; returns the arrays written."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for split, n in (("train", n_train), ("test", n_test)):
        x = rng.integers(0, 256, size=(32, 32, 3, n), dtype=np.uint8)
        y = rng.integers(1, 11, size=(n, 1), dtype=np.uint8)
        y[:3, 0] = [10, 1, 10]
        scipy.io.savemat(folder / D.SVHN_FILES[split][0], {"X": x, "y": y})
        arrays[split] = (x, y)
    return arrays


@pytest.mark.parametrize("bad", [11, 200])
def test_svhn_labels_outside_1_to_10_are_named_in_the_files_terms(tmp_path, bad):
    """The check runs after torchvision maps 10 to 0, on 0..9; the message speaks of the
    file's 1..10 and says what it found, mapped."""
    write_svhn(tmp_path)
    mat = scipy.io.loadmat(tmp_path / D.SVHN_FILES["train"][0])
    mat["y"][5, 0] = bad
    scipy.io.savemat(tmp_path / D.SVHN_FILES["train"][0], {"X": mat["X"], "y": mat["y"]})
    with pytest.raises(D.DataError) as err:
        D.load_svhn(tmp_path, download=False, verify_md5=False)
    message = str(err.value)
    assert "outside 1..10" in message and "after mapping 10, the digit 0, to 0" in message
    assert f"found 0..{bad}" in message, message


def test_an_empty_test_split_stays_a_split(tmp_path):
    empty = D.Split(torch.zeros(0, 1, 32, 32, dtype=torch.uint8), torch.zeros(0, dtype=torch.int64))
    data = D.Dataset(D.Split(torch.zeros(4, 1, 32, 32, dtype=torch.uint8), torch.arange(4) % 2),
                     empty, 2)
    moved = data.to(torch.device("cpu"))
    assert moved.test is not None and len(moved.test) == 0


def test_svhn_round_trip_maps_label_10_to_0(tmp_path):
    arrays = write_svhn(tmp_path)
    ds = D.load_svhn(tmp_path, download=False, verify_md5=False)
    x, y = arrays["train"]
    assert ds.train.images.dtype == torch.uint8 and ds.train.images.shape == (30, 3, 32, 32)
    assert torch.equal(ds.train.images, torch.from_numpy(x.transpose(3, 2, 0, 1).copy()))
    expected = torch.from_numpy(y[:, 0].astype(np.int64))
    expected[expected == 10] = 0
    assert torch.equal(ds.train.labels, expected)
    assert ds.train.labels[:3].tolist() == [0, 1, 0]
    assert len(ds.test) == 20 and ds.num_classes == 10
    unit = D.to_unit_range(ds.train.images)
    assert unit.min() >= -1 and unit.max() <= 1 and unit.dtype == torch.float32


def test_svhn_md5_mismatch_is_a_clear_error(tmp_path):
    write_svhn(tmp_path)
    with pytest.raises(D.DataError, match=r"MD5 .* official file has e26dedcc.*--skip-md5"):
        D.load_svhn(tmp_path, download=False)


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_svhn_corrupt_file_is_a_clear_error(tmp_path, damage):
    write_svhn(tmp_path)
    path = tmp_path / "train_32x32.mat"
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2] if damage == "truncate" else b"not a mat file" * 50)
    with pytest.raises(D.DataError, match="not a readable SVHN .mat file"):
        D.load_svhn(tmp_path, download=False, verify_md5=False)


def test_svhn_wrong_layout_is_a_clear_error(tmp_path):
    write_svhn(tmp_path)
    scipy.io.savemat(tmp_path / "test_32x32.mat", {"X": np.zeros((28, 28, 1, 4), np.uint8),
                                                    "y": np.ones((4, 1), np.uint8)})
    with pytest.raises(D.DataError, match=r"expected X \(32, 32, 3, N\)"):
        D.load_svhn(tmp_path, download=False, verify_md5=False)


def test_svhn_missing_without_download_names_files_url_and_flag(tmp_path):
    with pytest.raises(D.DataError) as err:
        D.load_svhn(tmp_path / "nowhere", download=False)
    message = str(err.value)
    for needle in ("train_32x32.mat", "http://ufldl.stanford.edu/housenumbers/", "--data-dir",
                   "--no-download"):
        assert needle in message


def test_svhn_download_failure_and_success(tmp_path, monkeypatch):
    import torchvision.datasets.utils as tv_utils
    monkeypatch.setattr(tv_utils, "_get_redirect_url", lambda url, max_hops=3: url)

    def offline(url, path, *args, **kwargs):
        Path(path).write_bytes(b"partial")  # a dropped connection leaves a partial file
        raise urllib.error.URLError("no network")
    monkeypatch.setattr(tv_utils, "_urlretrieve", offline)
    with pytest.raises(D.DataError, match="downloading .* failed .*--data-dir"):
        D.load_svhn(tmp_path / "dl")
    assert not (tmp_path / "dl" / "train_32x32.mat").exists()

    source = tmp_path / "source"
    write_svhn(source)
    monkeypatch.setattr(tv_utils, "_urlretrieve", lambda url, path, *args, **kwargs:
                        Path(path).write_bytes((source / url.rsplit("/", 1)[1]).read_bytes()))
    # torchvision checks the downloaded file's MD5: a synthetic file is refused ...
    with pytest.raises(D.DataError, match="has MD5 .* official file has e26dedcc"):
        D.load_svhn(tmp_path / "dl")
    # ... unless --skip-md5 (it is then kept, not downloaded again)
    ds = D.load_svhn(tmp_path / "dl", verify_md5=False)
    assert len(ds.train) == 30 and (tmp_path / "dl" / "test_32x32.mat").exists()


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I",
                                                                   *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


@pytest.mark.skipif(not SHARED_MNIST.is_dir(), reason="../shared/data/mnist is absent")
def test_mnist_subset_from_shared_data():
    ds = D.load_mnist(SHARED_MNIST, train_prefix="train-5k")
    assert ds.train.images.shape == (5000, 1, 32, 32) and ds.test.images.shape == (10000, 1, 32, 32)
    assert torch.bincount(ds.train.labels).tolist() == [500] * 10
    assert ds.train.images[:, :, :2].max() == 0 and ds.train.images[:, :, :, -2:].max() == 0
    assert ds.train.images.float().mean() > 10  # real digits, not zeros


def test_mnist_idx_round_trip_and_errors(tmp_path):
    images = np.random.default_rng(1).integers(0, 256, (7, 28, 28))
    labels = np.arange(7) % 10
    for prefix in ("mine", "t10k"):
        _write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", images)
        _write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", labels)
    ds = D.load_mnist(tmp_path, train_prefix="mine")
    assert torch.equal(ds.train.images[:, 0, 2:30, 2:30], torch.from_numpy(images.astype(np.uint8)))
    assert ds.train.labels.tolist() == labels.tolist()
    with pytest.raises(D.DataError, match="missing.*--mnist-train-prefix"):
        D.load_mnist(tmp_path, train_prefix="train", download=False)
    raw = (tmp_path / "mine-images-idx3-ubyte.gz").read_bytes()
    (tmp_path / "mine-images-idx3-ubyte.gz").write_bytes(raw[:40])
    with pytest.raises(D.DataError, match="not a valid IDX file.*replace it"):
        D.load_mnist(tmp_path, train_prefix="mine")


def write_image_folder(root: Path, classes=("cat", "dog"), per_class=4, unlabeled=6,
                       test_per_class=2) -> None:
    rng = np.random.default_rng(0)

    def save(path: Path, size):
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(path)

    for c in classes:
        for i in range(per_class):
            save(root / c / f"{i}.png", (40 + i, 50))
        for i in range(test_per_class):
            save(root / "test" / c / f"{i}.jpg", (20, 20))
    for i in range(unlabeled):
        save(root / "unlabeled" / f"u{i}.png", (64, 33))


def test_image_folder_dataset(tmp_path):
    write_image_folder(tmp_path)
    ds = D.load_image_folder(tmp_path, image_size=16, channels=3)
    assert ds.class_names == ["cat", "dog"] and ds.num_classes == 2
    assert ds.train.images.shape == (14, 3, 16, 16) and ds.train.images.dtype == torch.uint8
    assert ds.train.labels.tolist() == [0] * 4 + [1] * 4 + [-1] * 6
    assert ds.test.labels.tolist() == [0, 0, 1, 1]
    gray = D.load_image_folder(tmp_path, image_size=8, channels=1)
    assert gray.train.images.shape == (14, 1, 8, 8)


def test_image_folder_errors(tmp_path):
    with pytest.raises(D.DataError, match="does not exist.*--data-dir"):
        D.load_image_folder(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(D.DataError, match="no class subfolders"):
        D.load_image_folder(tmp_path / "empty")
    write_image_folder(tmp_path / "broken")
    (tmp_path / "broken" / "cat" / "bad.png").write_bytes(b"not an image")
    with pytest.raises(D.DataError, match="cannot read image .*bad.png"):
        D.load_image_folder(tmp_path / "broken")


def test_label_selection_first_and_balanced():
    labels = torch.tensor([3, 1, -1, 0, 2, 1, 0, 3, 2, 0, 1, 2, 3, -1, 0])
    first = D.select_labeled(labels, 4, "first", 4, seed=0)
    assert first.tolist() == [0, 1, 3, 4]
    balanced = D.select_labeled(labels, 8, "balanced", 4, seed=0)
    assert torch.bincount(labels[balanced], minlength=4).tolist() == [2, 2, 2, 2]
    assert (labels[balanced] >= 0).all()
    assert torch.equal(balanced, D.select_labeled(labels, 8, "balanced", 4, seed=0))
    others = [D.select_labeled(labels, 8, "balanced", 4, seed=s) for s in range(1, 6)]
    assert any(not torch.equal(balanced, o) for o in others)


@pytest.mark.parametrize("n,mode,classes,match", [
    (0, "first", 4, r"--labels must be in 1\.\.13"),
    (14, "first", 4, r"--labels must be in 1\.\.13"),
    (6, "balanced", 4, "not divisible by the 4 classes"),
    (12, "balanced", 2, "class 0 has only 4"),
    (4, "random", 4, "--label-selection must be first or balanced"),
])
def test_label_selection_errors(n, mode, classes, match):
    labels = torch.tensor([3, 1, -1, 0, 2, 1, 0, 3, 2, 0, 1, 2, 3, -1, 0])
    with pytest.raises(D.DataError, match=match):
        D.select_labeled(labels, n, mode, classes, seed=0)


def test_sample_grid_round_trips_pixels(tmp_path):
    """The grid (torchvision's save_image) maps [-1, 1] to 0..255 and tiles row by row."""
    from ssgan import plots
    images = torch.rand(5, 1, 8, 8) * 2 - 1
    path = plots.image_grid(images, tmp_path / "g" / "grid.png", nrow=3)
    with Image.open(path) as img:
        grid = np.asarray(img.convert("L"))
    assert grid.shape == (2 * 10 + 2, 3 * 10 + 2)  # 2 rows x 3 columns of 8 px, 2 px padding
    second = torch.from_numpy(grid[2:10, 12:20].astype(np.float32))
    expected = ((images[1, 0] + 1) * 127.5).clamp(0, 255)
    assert (second - expected).abs().max() <= 1.0


def test_bundled_mnist_is_the_default_and_matches_its_readme():
    ds = D.load_mnist()
    assert ds.train.images.shape == (5000, 1, 32, 32) and ds.test.images.shape == (10000, 1, 32, 32)
    assert torch.bincount(ds.train.labels).tolist() == [500] * 10
    assert ds.train.images.float().mean() > 10
    readme = (D.BUNDLED_MNIST / "README.md").read_text()
    assert "CC BY-SA 3.0" in readme and "LeCun" in readme
    for path in D.BUNDLED_MNIST.glob("*.gz"):
        assert calculate_md5(str(path)) in readme, path.name
    if SHARED_MNIST.is_dir():  # the same files as ../shared/data/mnist
        for path in SHARED_MNIST.glob("*.gz"):
            assert (D.BUNDLED_MNIST / path.name).read_bytes() == path.read_bytes()
    # sorted by class: "the first N labels" would all be zeros, which is refused
    with pytest.raises(D.DataError, match="all of class 0.*--label-selection balanced"):
        D.select_labeled(ds.train.labels, 100, "first", 10, seed=0)
    chosen = D.select_labeled(ds.train.labels, 100, "balanced", 10, seed=0)
    assert torch.bincount(ds.train.labels[chosen]).tolist() == [10] * 10


def test_full_mnist_download_checks_md5_and_names_the_fix(tmp_path, monkeypatch):
    import torchvision.datasets.utils as tv_utils
    monkeypatch.setattr(tv_utils, "_get_redirect_url", lambda url, max_hops=3: url)
    tried = []

    def offline(url, path, *args, **kwargs):
        tried.append(url)
        Path(path).write_bytes(b"partial")
        raise urllib.error.URLError("no network")
    monkeypatch.setattr(tv_utils, "_urlretrieve", offline)
    with pytest.raises(D.DataError, match="downloading it failed.*--data-dir"):
        D.load_mnist(tmp_path / "dl")
    for mirror in D.MNIST_MIRRORS:  # every mirror is tried (torchvision adds an http retry)
        assert any(mirror.split("//")[1] in url for url in tried), mirror
    assert not list((tmp_path / "dl").glob("*.gz"))  # no partial file is left behind

    # a mirror serving the official test files (the bundled ones are byte-identical) and a
    # corrupt training file: the test files are kept, the training file is refused by MD5
    def serve(url, path, *args, **kwargs):
        name = url.rsplit("/", 1)[1]
        source = D.BUNDLED_MNIST / name
        Path(path).write_bytes(source.read_bytes() if source.exists() else b"not mnist")
    monkeypatch.setattr(tv_utils, "_urlretrieve", serve)
    with pytest.raises(D.DataError, match="train-images-idx3-ubyte.gz is missing and "
                       "downloading it failed"):
        D.load_mnist(tmp_path / "dl")
    ds = D.load_mnist(tmp_path / "dl", train_prefix="t10k")
    assert len(ds.train) == len(ds.test) == 10000
    assert (tmp_path / "dl" / "t10k-labels-idx1-ubyte.gz").exists()
