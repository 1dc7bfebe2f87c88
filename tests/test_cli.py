import json
import subprocess
import sys

import pytest
from PIL import Image

from bench import accuracy_report
from ssgan import cli
from test_data import write_image_folder, write_svhn


@pytest.mark.parametrize("command", [[], ["train"], ["eval"], ["sample"]])
def test_help(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(command + ["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "usage: ssgan" in out
    if command == ["train"]:
        for flag in ("--seed", "--resume", "--device", "--labels", "--label-selection",
                     "--labeled-batch-size", "--eval-bn", "--kernels", "--extra-class"):
            assert flag in out


def test_module_entry_point():
    out = subprocess.run([sys.executable, "-m", "ssgan", "--help"], capture_output=True,
                         text=True, check=True)
    assert "train" in out.stdout and "sample" in out.stdout


TINY = ["--d-size-mult", "4", "--g-size-mult", "4", "--z-dim", "8", "--batch-size", "8",
        "--device", "cpu", "--kernels", "torch", "--no-progress"]


def test_train_eval_sample_on_an_image_folder(tmp_path, capsys):
    data = tmp_path / "images"
    write_image_folder(data, per_class=6, unlabeled=8, test_per_class=3)
    args = ["train", "--dataset", "folder", "--data-dir", str(data), "--image-size", "32",
            "--labels", "4", "--label-selection", "balanced", "--epochs", "2",
            "--out-dir", str(tmp_path / "runs"), "--name", "demo", *TINY]
    assert cli.main(args) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["epochs"] == 2 and 0 <= summary["test_accuracy"] <= 1
    ckpt = tmp_path / "runs" / "demo" / "checkpoints" / "last.pt"

    assert cli.main(["eval", str(ckpt), "--device", "cpu", "--kernels", "torch"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["test_examples"] == 6 and result["epoch"] == 2

    out_png = tmp_path / "grid.png"
    assert cli.main(["sample", str(ckpt), "--n", "10", "--out", str(out_png), "--device",
                     "cpu", "--kernels", "torch"]) == 0
    with Image.open(out_png) as img:
        assert img.size[0] > 32 and img.mode == "RGB"

    # the accuracy report collects the run and evaluates it with both BatchNorm modes
    assert accuracy_report.main([str(ckpt.parents[1]), "--out", str(tmp_path / "report")]) == 0
    summary = (tmp_path / "report" / "summary.csv").read_text()
    assert "test_accuracy_batch_bn" in summary and (tmp_path / "report" / "comparison.png").exists()
    capsys.readouterr()

    # resuming a finished run to more epochs continues it
    assert cli.main([*args[:args.index("--epochs")], "--epochs", "3",
                     *args[args.index("--epochs") + 2:], "--resume"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["epochs"] == 3


def test_train_on_synthetic_svhn_files(tmp_path, capsys):
    write_svhn(tmp_path / "svhn", n_train=40, n_test=16)
    assert cli.main(["train", "--data-dir", str(tmp_path / "svhn"), "--skip-md5", "--labels",
                     "10", "--epochs", "1", "--out-dir", str(tmp_path / "runs"), *TINY]) == 0
    assert (tmp_path / "runs" / "svhn-10labels" / "metrics.csv").exists()


@pytest.mark.parametrize("extra,match", [
    (["--data-dir", "{tmp}/none", "--no-download"], "--data-dir"),
    (["--data-dir", "{tmp}/svhn", "--skip-md5", "--labels", "500", "--batch-size", "8"],
     "--labels must be in"),
    (["--data-dir", "{tmp}/svhn", "--skip-md5", "--batch-size", "0"], "--batch-size"),
    (["--data-dir", "{tmp}/svhn", "--skip-md5", "--device", "cuda:7"], "--device"),
    (["--data-dir", "{tmp}/svhn"], "--skip-md5"),
])
def test_train_errors_name_the_flag(tmp_path, capsys, extra, match):
    write_svhn(tmp_path / "svhn", n_train=40, n_test=16)
    args = ["train", "--out-dir", str(tmp_path / "runs")] + [
        a.format(tmp=tmp_path) for a in extra]
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("ssgan train: error:") and match in err


def test_eval_and_sample_missing_checkpoint(tmp_path, capsys):
    for command in ("eval", "sample"):
        assert cli.main([command, str(tmp_path / "nope.pt"), "--device", "cpu"]) == 2
        assert "no checkpoint at" in capsys.readouterr().err
    assert cli.main(["sample", str(tmp_path / "x.pt"), "--n", "0"]) == 2
