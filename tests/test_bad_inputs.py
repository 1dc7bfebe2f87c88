"""Every bad file a command reads ends in one line: checkpoints (eval, sample, predict, export,
train --resume), the images predict reads, and image folders training reads. Each sweep draws
fresh damage every run; a failure names the seed that reproduces it."""
import hashlib
import io
import os
import pickle
import random
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import ssgan.train as T
from ssgan import checkpoints, cli
from ssgan.data import DataError, load_image_folder
from test_data import write_image_folder
from test_train import tiny_config

SEED = int.from_bytes(os.urandom(4), "little")
COMMANDS = ("eval", "sample", "predict", "export", "train")
TINY_TRAIN = ["--device", "cpu", "--kernels", "torch", "--d-size-mult", "4", "--g-size-mult",
              "4", "--z-dim", "8", "--no-progress"]


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    """A real checkpoint of a one-epoch run on an image folder, which every command can
    read again (so that damage past the file's checks meets the models)."""
    root = tmp_path_factory.mktemp("good")
    write_image_folder(root / "images", per_class=6, unlabeled=8, test_per_class=3)
    T.Trainer(tiny_config(root, epochs=1, dataset="folder", data_dir=str(root / "images"),
                          labels=4, batch_size=8)).fit()
    return root / "run" / checkpoints.LAST


class Foreign:
    """A class no ssgan checkpoint holds."""


def _members(data: bytes) -> list[tuple[int, int]]:
    """(start, end) of every zip member's stored bytes."""
    spans = []
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        for info in archive.infolist():
            name_len, extra_len = struct.unpack("<HH", data[info.header_offset + 26:
                                                             info.header_offset + 30])
            start = info.header_offset + 30 + name_len + extra_len
            if info.compress_size:
                spans.append((start, start + info.compress_size))
    return spans


def _zip_of(**members: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        for name, content in members.items():
            archive.writestr(name, content)
    return buf.getvalue()


def bad_checkpoints(good: Path, rng: random.Random) -> dict[str, bytes | None]:
    """At least 100 damaged or foreign checkpoints by name (None: a run folder without one)."""
    data = good.read_bytes()
    state = torch.load(good, weights_only=True)
    cases: dict[str, bytes | None] = {}
    for i in range(35):
        cases[f"truncated-{i}"] = data[:rng.randrange(0, len(data))]
    for i in range(10):
        cases[f"random-{i}"] = rng.randbytes(rng.randrange(1, 20000))
    for i, text in enumerate(["hello\n", "{\"epoch\": 3}", "PK not really a zip",
                              "version https://git-lfs.github.com/spec/v1\n"]):
        cases[f"text-{i}"] = text.encode()
    cases["empty"] = b""
    spans = _members(data)
    for i in range(35):
        flipped = bytearray(data)
        start, end = rng.choice(spans)
        # distinct bits: a bit flipped twice is restored, and a member of a byte or two could
        # come out undamaged (seed 4237244453 did)
        bits = 8 * (end - start)
        for bit in rng.sample(range(bits), min(rng.randint(1, 64), bits)):
            flipped[start + bit // 8] ^= 1 << (bit % 8)
        assert flipped != data
        cases[f"flipped-{i}"] = bytes(flipped)
    cases["zip-of-text"] = _zip_of(**{"readme.txt": b"hello"})
    cases["zip-of-garbage-pickle"] = _zip_of(**{"archive/data.pkl": b"\x80\x04garbage"})
    cases["plain-pickle-of-a-dict"] = pickle.dumps({"epoch": 1, "config": {}})
    cases["plain-pickle-of-a-foreign-class"] = pickle.dumps(Foreign())

    def saved(obj) -> bytes:
        buf = io.BytesIO()
        torch.save(obj, buf)
        return buf.getvalue()
    cases["torch-save-of-a-foreign-class"] = saved({"model": Foreign()})
    cases["torch-save-of-a-tensor"] = saved(torch.randn(3))
    cases["foreign-dict"] = saved({"weights": torch.randn(3)})
    without_format = dict(state)
    del without_format["format"]
    cases["format-missing"] = saved(without_format)
    cases["format-newer"] = saved({**state, "format": checkpoints.FORMAT + 1})
    cases["format-older"] = saved({**state, "format": checkpoints.FORMAT - 1})
    cases["format-not-a-number"] = saved({**state, "format": "2"})
    cases["missing-discriminator"] = saved({k: v for k, v in state.items()
                                            if k != "discriminator"})
    cases["generator-a-list"] = saved({**state, "generator": [1, 2]})
    cases["config-unknown-setting"] = saved({**state, "config": {**state["config"],
                                                                 "warp_drive": 9}})
    cases["config-wrong-type"] = saved({**state, "config": {**state["config"],
                                                            "d_size_mult": "wide"}})
    wrong_shapes = {k: torch.randn(2, 2) for k in state["discriminator"]}
    cases["weights-of-another-shape"] = saved({**state, "discriminator": wrong_shapes,
                                               "generator": wrong_shapes})
    cases["no-checkpoint-in-the-run-folder"] = None
    assert len(cases) >= 100
    return cases


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            if p.is_file() else "dir" for p in sorted(folder.rglob("*"))}


def argv(command: str, run_dir: Path, tmp: Path) -> list[str]:
    if command == "train":
        return ["train", "--resume", "--out-dir", str(run_dir.parent), "--name", run_dir.name,
                *TINY_TRAIN]
    extra = {"predict": [str(tmp / "no-images-needed"), "--out", str(tmp / "p.csv")],
             "sample": ["--out", str(tmp / "s.png")],
             "export": ["--out", str(tmp / "x.pt2")]}.get(command, [])
    device = [] if command == "export" else ["--device", "cpu"]
    return [command, str(run_dir), *extra, *device]


def test_every_bad_checkpoint_ends_in_one_line_and_changes_nothing(good, tmp_path, capsys):
    rng = random.Random(SEED)
    cases = bad_checkpoints(good, rng)
    (tmp_path / "no-images-needed").mkdir()
    tried = dict.fromkeys(COMMANDS, 0)
    for name, content in cases.items():
        run_dir = tmp_path / "runs" / name
        (run_dir / "checkpoints").mkdir(parents=True)
        (run_dir / "metrics.csv").write_text("epoch\n1\n")
        if content is not None:
            (run_dir / checkpoints.LAST).write_bytes(content)
        before = snapshot(run_dir)
        for command in COMMANDS:
            code = cli.main(argv(command, run_dir, tmp_path))
            captured = capsys.readouterr()
            where = f"{command} on {name} (seed {SEED})"
            assert code == 2, f"{where}: exit {code}"
            err = captured.err
            assert err.startswith(f"ssgan {command}: error: ") and err.count("\n") == 1, \
                f"{where}: {err}"
            assert "Traceback" not in err and "weights_only" not in err, f"{where}: {err}"
            assert str(run_dir) in err, f"{where} does not name the file: {err}"
            assert snapshot(run_dir) == before, f"{where} changed the run folder"
            tried[command] += 1
    assert not (tmp_path / "p.csv").exists() and not (tmp_path / "x.pt2").exists()
    assert all(n >= 100 for n in tried.values()), tried


def test_flipped_bits_in_any_member_are_refused_before_loading(good, tmp_path):
    """The zip CRCs catch what torch.load would load silently: one flipped bit per member."""
    data = good.read_bytes()
    for i, (start, end) in enumerate(_members(data)):
        flipped = bytearray(data)
        flipped[(start + end) // 2] ^= 1
        path = tmp_path / f"m{i}.pt"
        path.write_bytes(bytes(flipped))
        with pytest.raises(checkpoints.CheckpointError, match="CRC"):
            checkpoints.load(path)
    assert checkpoints.load(good)["epoch"] == 1


# ------------------------------------------------------------------ images that predict reads

def _png_header_claiming(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims ``width`` x ``height`` (with a valid CRC) and holds no pixels."""
    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    ihdr = 8  # after the signature: length, b"IHDR", 13 bytes of data, CRC
    data[ihdr + 8:ihdr + 16] = struct.pack(">II", width, height)
    data[ihdr + 21:ihdr + 25] = struct.pack(">I", zlib.crc32(bytes(data[ihdr + 4:ihdr + 21])))
    return bytes(data)


def bad_images(rng: random.Random) -> tuple[dict[str, bytes], dict[str, bytes]]:
    """(unreadable images by file name, readable but unusual ones by file name)."""
    def encoded(image: Image.Image, fmt: str, **kwargs) -> bytes:
        buf = io.BytesIO()
        image.save(buf, format=fmt, **kwargs)
        return buf.getvalue()
    rgb = Image.fromarray(np.frombuffer(rng.randbytes(32 * 32 * 3), np.uint8).reshape(32, 32, 3))
    png, jpeg = encoded(rgb, "PNG"), encoded(rgb, "JPEG")
    corrupt_png = bytearray(png)
    for _ in range(16):
        corrupt_png[rng.randrange(40, len(png))] ^= 0xFF
    frames = [Image.new("L", (32, 32), color=c) for c in (0, 128, 255)]
    unreadable = {
        "empty.png": b"", "truncated.png": png[:len(png) // 2],
        "corrupt.png": bytes(corrupt_png), "truncated.jpg": jpeg[:len(jpeg) // 3],
        "corrupt.jpg": jpeg[:20] + rng.randbytes(len(jpeg) - 20),
        "text.png": b"not an image", "animated.gif": encoded(frames[0], "GIF", save_all=True,
                                                             append_images=frames[1:]),
        "huge-header.png": _png_header_claiming(20000, 20000),
    }
    sixteen = Image.fromarray(np.arange(32 * 32, dtype=np.uint16).reshape(32, 32) * 64)
    readable = {"sixteen-bit.png": encoded(sixteen, "PNG"),
                "cmyk.jpg": encoded(rgb.convert("CMYK"), "JPEG")}
    return unreadable, readable


def test_every_bad_image_is_named_or_skipped(tmp_path, capsys, good):
    unreadable, readable = bad_images(random.Random(SEED))
    folder = tmp_path / "images"
    folder.mkdir()
    for name, content in {**unreadable, **readable}.items():
        (folder / name).write_bytes(content)
    run_dir = good.parents[1]
    for name in unreadable:
        code = cli.main(["predict", str(run_dir), str(folder / name), "--out",
                         str(tmp_path / "one.csv"), "--device", "cpu", "--no-progress"])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1, f"{name} (seed {SEED}): {err}"
        assert err.startswith("ssgan predict: error: ") and str(folder / name) in err, err
        assert "Traceback" not in err and "--skip-unreadable" in err, err
    out = tmp_path / "all.csv"
    assert cli.main(["predict", str(run_dir), str(folder), "--out", str(out), "--device", "cpu",
                     "--no-progress", "--skip-unreadable"]) == 0
    captured = capsys.readouterr()
    skipped = {line.rsplit("/", 1)[-1] for line in captured.err.splitlines()
               if "skipped unreadable image" in line}
    # a folder is searched for torchvision's image extensions, which have no .gif
    assert skipped == set(unreadable) - {"animated.gif"}, (captured.err, SEED)
    predicted = {Path(row.split(",")[0]).name for row in out.read_text().splitlines()[1:]}
    assert predicted == set(readable)


def test_sixteen_bit_images_are_scaled_not_clipped(tmp_path):
    from ssgan.data import open_image
    values = torch.randint(0, 65536, (16, 16), dtype=torch.int32)
    Image.fromarray(values.numpy().astype("uint16")).save(tmp_path / "a.png")
    image = open_image(tmp_path / "a.png")
    assert image.mode == "L"
    got = torch.from_numpy(np.asarray(image).astype(np.int32))
    assert torch.equal(got, values >> 8)


# ------------------------------------------------------------------ image folders training reads

def _write_png(path: Path, size: tuple[int, int], value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color=(value, value, value)).save(path)


def test_image_folder_sweep(tmp_path, capsys):
    root = tmp_path / "data"
    for c, name in enumerate(("cat", "dog")):
        for i in range(3):
            # mixed sizes are resized to --image-size, as documented
            _write_png(root / name / f"{i}.png", (20 + 7 * i, 40 - 5 * i), 60 * c + 10 * i)
    data = load_image_folder(root, image_size=16)
    assert data.train.images.shape == (6, 3, 16, 16) and data.num_classes == 2

    (root / "bird").mkdir()
    with pytest.raises(DataError, match="bird.*no images"):
        load_image_folder(root, image_size=16)
    (root / "bird").rmdir()

    (root / "dog" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    args = ["train", "--dataset", "folder", "--data-dir", str(root), "--labels", "2",
            "--out-dir", str(tmp_path / "runs"), *TINY_TRAIN]
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(root / "dog" / "broken.png") in err, err
    assert not (tmp_path / "runs").exists()
