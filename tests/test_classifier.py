"""Using a trained run: ``ssgan predict``, ``ssgan export`` and ``ssgan.load_classifier``, and
clean failures on bad checkpoints, unreadable images and SIGTERM."""
import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

import ssgan
import ssgan.train as T
from ssgan import checkpoints, cli
from ssgan.data import load_mnist
from ssgan.evaluation import eval_bn_statistics

TEST_IMAGES = 120


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny model trained for one epoch on the bundled MNIST subset, evaluated as the
    trainer evaluates; returns the run folder and D's predictions on the first test images
    under the evaluation's own statistics."""
    root = tmp_path_factory.mktemp("mnist-run")
    cfg = T.config_for("improved", epochs=1, d_size_mult=4, g_size_mult=4, z_dim=8,
                       kernels="torch", device="cpu", progress=False, out_dir=str(root),
                       name="run")
    trainer = T.Trainer(cfg)
    trainer.fit()
    d, images = trainer.eval_model, trainer.data.test.images[:TEST_IMAGES]
    with eval_bn_statistics(d, trainer.cfg, trainer.data.train.images), torch.no_grad():
        d.eval()
        logits = d(images.float().div(127.5).sub(1.0))[0][:, :10]
    return root / "run", logits.argmax(1).tolist()


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """The first bundled MNIST test images as 28x28 PNGs, as the IDX files hold them (the
    dataset pads them to 32x32), in a nested folder."""
    folder = tmp_path_factory.mktemp("digits")
    padded = load_mnist().test.images[:TEST_IMAGES]
    for i, image in enumerate(padded[:, 0, 2:30, 2:30]):
        path = folder / f"part{i % 2}" / f"{i:04d}.png"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(image.numpy()).save(path)
    return folder


def read_rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_predict_gives_the_trainers_evaluation_predictions(run, digits, tmp_path, capsys):
    run_dir, expected = run
    out = tmp_path / "predictions.csv"
    assert cli.main(["predict", str(run_dir), str(digits), "--out", str(out), "--device", "cpu",
                     "--batch-size", "32", "--no-progress"]) == 0
    summary = capsys.readouterr().out.strip().splitlines()[-1]
    assert summary.startswith(f"ssgan predict: {TEST_IMAGES} images -> {out} | ")
    rows = read_rows(out)
    assert list(rows[0]) == ["path", "prediction", "confidence", *map(str, range(10))]
    by_index = {int(Path(r["path"]).stem): r for r in rows}
    assert [int(by_index[i]["prediction"]) for i in range(TEST_IMAGES)] == expected
    for r in rows:
        probs = [float(r[str(c)]) for c in range(10)]
        assert sum(probs) == pytest.approx(1.0, abs=1e-5)
        assert float(r["confidence"]) == pytest.approx(max(probs))
    counts = {name: sum(r["prediction"] == name for r in rows) for name in map(str, range(10))}
    assert summary.endswith(", ".join(f"{k}: {n}" for k, n in counts.items() if n))


def test_load_classifier_takes_pil_images_and_uint8_tensors(run, digits):
    loaded = ssgan.load_classifier(run[0], device="cpu")
    assert loaded.class_names == [str(i) for i in range(10)] and not loaded.model.training
    path = sorted(digits.rglob("*.png"))[0]
    with Image.open(path) as image:
        from_pil = loaded.transform(image)
        from_tensor = loaded.transform(torch.from_numpy(__import__("numpy").array(image))[None])
    assert from_pil.shape == (1, 32, 32) and torch.equal(from_pil, from_tensor)
    assert 0 <= from_pil.min() and from_pil.max() <= 1 and from_pil[:, :2].sum() == 0  # padded
    with pytest.raises(ValueError, match="uint8"):
        loaded.transform(torch.zeros(1, 28, 28))


EXPORT_CHECK = r"""
import json, sys
import importlib.abc
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "ssgan" or name.startswith("ssgan."):
            raise ImportError("ssgan is blocked in this process")
sys.meta_path.insert(0, Block())
import torch
extra = {"class_names.json": "", "input_spec.json": ""}
program = torch.export.load(sys.argv[1], extra_files=extra)
ops = sorted({str(n.target) for n in program.graph.nodes if n.op == "call_function"})
model = program.module()
outs = [model(x) for x in torch.load(sys.argv[2])]
torch.save(outs, sys.argv[3])
print(json.dumps({"ops": ops, "class_names": json.loads(extra["class_names.json"]),
                  "spec": json.loads(extra["input_spec.json"]),
                  "ssgan_loaded": any(m.startswith("ssgan") for m in sys.modules)}))
"""


@pytest.mark.subprocess
def test_export_loads_without_ssgan_and_matches_predict(run, tmp_path, capsys):
    run_dir, _ = run
    out = tmp_path / "classifier.pt2"
    assert cli.main(["export", str(run_dir), "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == f"ssgan export: wrote {out}"
    loaded = ssgan.load_classifier(run_dir, device="cpu")
    inputs = [torch.rand(n, 1, 32, 32) for n in (1, 7)]
    torch.save(inputs, tmp_path / "inputs.pt")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", EXPORT_CHECK, str(out),
                           str(tmp_path / "inputs.pt"), str(tmp_path / "outputs.pt")],
                          capture_output=True, text=True, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not report["ssgan_loaded"] and report["class_names"] == loaded.class_names
    assert report["spec"]["shape"] == ["N", 1, 32, 32] and report["spec"]["range"] == [0.0, 1.0]
    assert all(op.startswith("aten.") for op in report["ops"]), report["ops"]
    assert not any("dropout" in op for op in report["ops"])
    for x, y in zip(inputs, torch.load(tmp_path / "outputs.pt")):
        with torch.no_grad():
            expected = loaded.model(x)
        assert y.shape == (x.shape[0], 10)
        torch.testing.assert_close(y, expected, rtol=0, atol=1e-4)
        assert torch.equal(y.argmax(1), expected.argmax(1))


def _one_line_error(capsys, command: str, *needles: str) -> str:
    err = capsys.readouterr().err
    assert err.startswith(f"ssgan {command}: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err and all(n in err for n in needles), err
    return err


@pytest.mark.parametrize("damage", ["truncated", "not a zip", "foreign", "newer"])
@pytest.mark.parametrize("command", ["eval", "sample", "predict", "export"])
def test_a_bad_checkpoint_ends_in_one_line(run, tmp_path, capsys, damage, command):
    good = run[0] / checkpoints.LAST
    bad = tmp_path / "bad.pt"
    if damage == "truncated":
        bad.write_bytes(good.read_bytes()[:4096])
    elif damage == "not a zip":
        bad.write_bytes(b"\x00garbage" * 100)
    elif damage == "foreign":
        torch.save({"weights": torch.zeros(3)}, bad)
    else:
        state = torch.load(good, weights_only=True)
        torch.save({**state, "format": checkpoints.FORMAT + 1}, bad)
    extra = {"predict": [str(tmp_path)], "export": ["--out", str(tmp_path / "x.pt2")]}
    assert cli.main([command, str(bad), *extra.get(command, []), "--device", "cpu"]
                    if command != "export" else [command, str(bad), *extra[command]]) == 2
    expected = {"truncated": "not a readable ssgan checkpoint", "not a zip":
                "not a readable ssgan checkpoint", "foreign": "not an ssgan checkpoint",
                "newer": "newer ssgan"}[damage]
    _one_line_error(capsys, command, str(bad), expected)


def test_every_checkpoint_command_takes_a_run_folder(run, tmp_path, capsys):
    run_dir = run[0]
    assert cli.main(["eval", str(run_dir), "--device", "cpu", "--kernels", "torch"]) == 0
    assert json.loads(capsys.readouterr().out)["checkpoint"] == str(run_dir / checkpoints.LAST)
    assert cli.main(["sample", str(run_dir), "--n", "4", "--out", str(tmp_path / "g.png"),
                     "--device", "cpu", "--kernels", "torch"]) == 0
    assert (tmp_path / "g.png").exists()
    assert cli.main(["eval", str(tmp_path), "--device", "cpu"]) == 2
    _one_line_error(capsys, "eval", str(tmp_path / checkpoints.LAST), "no checkpoint at")


def test_an_unreadable_image_is_named_or_skipped(run, digits, tmp_path, capsys):
    folder = tmp_path / "images"
    folder.mkdir()
    good = sorted(digits.rglob("*.png"))[:3]
    for path in good:
        (folder / path.name).write_bytes(path.read_bytes())
    (folder / "broken.png").write_bytes(b"not a png at all")
    out = tmp_path / "p.csv"
    args = ["predict", str(run[0]), str(folder), "--out", str(out), "--device", "cpu",
            "--no-progress"]
    assert cli.main(args) == 2
    _one_line_error(capsys, "predict", str(folder / "broken.png"), "--skip-unreadable")
    assert cli.main(args + ["--skip-unreadable"]) == 0
    captured = capsys.readouterr()
    assert f"skipped unreadable image {folder / 'broken.png'}" in captured.err
    assert "3 images, 1 unreadable skipped" in captured.out
    assert len(read_rows(out)) == 3


@pytest.mark.subprocess
def test_sigterm_stops_training_keeps_the_checkpoint_and_resume_finishes(tmp_path):
    args = [sys.executable, "-m", "ssgan", "train", "--epochs", "40", "--eval-every", "40",
            "--d-size-mult", "4", "--g-size-mult", "4", "--z-dim", "8", "--kernels", "torch",
            "--device", "cpu", "--no-progress", "--out-dir", str(tmp_path), "--name", "run"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "run" / "metrics.csv"
    deadline = time.monotonic() + 240
    while (not metrics.exists() or len(read_rows(metrics)) < 2) and time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "stopped by SIGTERM; the last finished epoch's checkpoint is kept" in err
    assert "Traceback" not in err
    # the signal may land between epoch 2's metrics row and its checkpoint: then the
    # checkpoint is epoch 1's, and --resume drops the row written after it
    stopped_at = checkpoints.load(tmp_path / "run")["epoch"]
    assert 1 <= stopped_at < 40
    finish = subprocess.run([*args[:args.index("40")], "%d" % (stopped_at + 2),
                             *args[args.index("40") + 1:], "--resume"],
                            capture_output=True, text=True, timeout=240)
    assert finish.returncode == 0, finish.stderr[-3000:]
    assert [int(r["epoch"]) for r in read_rows(metrics)] == list(range(1, stopped_at + 3))
