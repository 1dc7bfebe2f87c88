import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from bench import accuracy_report
import ssgan.train as T
from ssgan import cli, distributed
from ssgan.data import BUNDLED_MNIST
from ssgan.config import RECIPES, TrainConfig, config_for
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


@pytest.mark.subprocess
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
    last_line = capsys.readouterr().out.strip().splitlines()[-1]
    run = tmp_path / "runs" / "demo"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["epochs"] == 2 and 0 <= summary["test_accuracy"] <= 1
    assert summary["recipe"] == "improved" and summary["wall_s"] > 0
    assert last_line.startswith("ssgan: done: test accuracy") and str(run) in last_line
    for plot in summary["plots"]:
        assert plot in last_line and Path(plot).exists()
    ckpt = run / "checkpoints" / "last.pt"

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
    capsys.readouterr()
    assert json.loads((run / "summary.json").read_text())["epochs"] == 3


def test_a_bare_train_runs_train_config_defaults():
    assert cli.config_from_args(cli.build_parser().parse_args(["train"])) == TrainConfig()
    assert RECIPES["improved"] == {}  # the default recipe is TrainConfig() itself
    notebook = cli.config_from_args(cli.build_parser().parse_args(["train", "--recipe",
                                                                   "notebook", "--lr", "0.1"]))
    assert notebook == config_for("notebook", lr=0.1) and notebook.dataset == "svhn"


def test_every_setting_has_a_flag_with_help():
    out = cli.build_parser()._subparsers._group_actions[0].choices["train"].format_help()
    for f in dataclasses.fields(TrainConfig):
        flag = f.metadata["negate"] or "--" + f.name.replace("_", "-")
        assert flag in out and f.metadata["help"], f.name


@pytest.mark.parametrize("recipe", ["notebook", "improved"])
def test_train_on_synthetic_svhn_files(tmp_path, recipe):
    write_svhn(tmp_path / "svhn", n_train=40, n_test=16)
    assert cli.main(["train", "--recipe", recipe, "--dataset", "svhn", "--data-dir",
                     str(tmp_path / "svhn"), "--skip-md5", "--labels", "10", "--epochs", "1",
                     "--out-dir", str(tmp_path / "runs"), *TINY]) == 0
    config = json.loads((tmp_path / "runs" / "svhn-10labels" / "config.json").read_text())
    assert config["recipe"] == recipe and config["dataset"] == "svhn"
    # the preset applies where no flag was given; the flags win where they were
    assert config["labels"] == 10 and config["batch_size"] == 8
    preset = dataclasses.asdict(config_for(recipe))
    for key in ("augment_shift", "ema_decay", "lr_schedule", "labeled_batch_size", "epochs"):
        assert config[key] == (1 if key == "epochs" else preset[key])


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
    args = ["train", "--recipe", "notebook", "--out-dir", str(tmp_path / "runs")] + [
        a.format(tmp=tmp_path) for a in extra]
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("ssgan train: error:") and match in err


def test_eval_and_sample_missing_checkpoint(tmp_path, capsys):
    for command in ("eval", "sample"):
        assert cli.main([command, str(tmp_path / "nope.pt"), "--device", "cpu"]) == 2
        assert "no checkpoint at" in capsys.readouterr().err
    assert cli.main(["sample", str(tmp_path / "x.pt"), "--n", "0"]) == 2


def test_bare_train_uses_the_improved_recipe_on_the_bundled_data(tmp_path, capsys):
    # the bare command, shortened to one epoch of a tiny model
    assert cli.main(["train", "--epochs", "1", "--d-size-mult", "4", "--g-size-mult", "4",
                     "--z-dim", "8", "--device", "cpu", "--kernels", "torch", "--no-progress",
                     "--out-dir", str(tmp_path / "runs")]) == 0
    out = capsys.readouterr().out
    run = tmp_path / "runs" / "mnist-100labels"
    config = json.loads((run / "config.json").read_text())
    assert config["recipe"] == "improved" and config["dataset"] == "mnist"
    assert config["data_dir"] == str(BUNDLED_MNIST) and config["mnist_train_prefix"] == "train-5k"
    assert "5000 train images (100 labeled, 10 classes), 10000 test" in out
    assert out.strip().splitlines()[-1].startswith("ssgan: done: test accuracy")
    assert json.loads((run / "summary.json").read_text())["test_accuracy"] > 0.1


class _Failing:
    """A Trainer whose fit raises ``error``."""
    error: BaseException = RuntimeError()

    def __init__(self, cfg):
        pass

    def fit(self):
        raise self.error


@pytest.mark.parametrize("world", [1, 2])
@pytest.mark.parametrize("error,says,never", [
    (T.TrainingError("non-finite loss at epoch 1, steps 1..8"), "non-finite loss", "died"),
    (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
     "out of memory", "died"),
    (RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 9 GB"),
     "out of memory", "died"),
])
def test_train_errors_name_their_real_cause(monkeypatch, capsys, world, error, says, never):
    """On one rank or under torchrun: a non-finite loss or an allocation failure is reported
    as what it is, never as a peer's death; out of memory names --batch-size."""
    monkeypatch.setattr(distributed, "_joined_group", distributed.Group(0, world))
    monkeypatch.setattr(cli, "Trainer", type("T", (_Failing,), {"error": error}))
    assert cli.main(["train"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and says in err and never not in err, err
    if says == "out of memory":
        assert "--batch-size" in err


def test_under_torchrun_a_lost_peer_is_one_line_and_a_bug_is_a_traceback(monkeypatch, capsys):
    monkeypatch.setattr(distributed, "_joined_group", distributed.Group(1, 2))
    peer = RuntimeError("[../third_party/gloo/gloo/transport/tcp/pair.cc:534] Connection "
                        "closed by peer [127.0.0.1]:1234")
    monkeypatch.setattr(cli, "Trainer", type("T", (_Failing,), {"error": peer}))
    assert cli.main(["train"]) == 2
    err = capsys.readouterr().err
    assert "rank 1 of 2 stopped" in err and "Another process died" in err and "--resume" in err
    monkeypatch.setattr(distributed, "_joined_group", distributed.Group(1, 2))
    bug = RuntimeError("mat1 and mat2 shapes cannot be multiplied")
    monkeypatch.setattr(cli, "Trainer", type("T", (_Failing,), {"error": bug}))
    with pytest.raises(RuntimeError, match="mat1"):
        cli.main(["train"])


@pytest.mark.parametrize("command,target,argv", [
    ("eval", "evaluate_checkpoint", ["eval", "run"]),
    ("predict", "predict", ["predict", "run", "images"]),
    ("train", "Trainer", ["train"]),
])
def test_ctrl_c_says_interrupted_and_mentions_resume_only_for_train(monkeypatch, capsys,
                                                                    command, target, argv):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(cli, target, type("T", (_Failing,), {"error": KeyboardInterrupt()})
                        if target == "Trainer" else interrupted)
    assert cli.main(argv) == 130
    err = capsys.readouterr().err
    assert err.startswith(f"ssgan {command}: interrupted") and err.count("\n") == 1, err
    assert ("--resume" in err) == (command == "train"), err
