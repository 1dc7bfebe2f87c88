"""``ssgan`` command line: ``train``, and ``eval``, ``sample``, ``predict`` and ``export`` on a
checkpoint or a run folder."""
from __future__ import annotations

import argparse
import dataclasses
import json
import signal
import sys

import torch

import ssgan.kernels as K
from ssgan import __version__, plots
from ssgan import checkpoints, distributed
from ssgan.config import RECIPES, TrainConfig, config_for
from ssgan.data import DataError
from ssgan.devices import resolve_device
from ssgan.errors import first_line
from ssgan.classifier import export_classifier
from ssgan.evaluation import evaluate_checkpoint
from ssgan.predict import predict
from ssgan.models import EVAL_BN_MODES, Generator
from ssgan.train import Trainer, TrainingError


def _shown_default(f: dataclasses.Field) -> str:
    """' (default: X)', plus each other recipe's value where it differs from X."""
    default = getattr(TrainConfig(), f.name)
    others = {name: getattr(config_for(name), f.name) for name in RECIPES}
    differing = ", ".join(f"{name}: {value}" for name, value in others.items()
                          if value != default)
    shown = [] if default in (False, "") else [f"default: {default}"]
    return f" ({'; '.join(shown + ([differing] if differing else []))})" \
        if shown or differing else ""


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field, its help and choices from the field's metadata. Flags
    default to absent, so that a recipe's preset applies unless the flag is given."""
    parser.add_argument("--recipe", choices=list(RECIPES), default=TrainConfig().recipe,
                        help="preset of the settings below; explicit flags override it. "
                        "improved: the measured recipe on the bundled MNIST subset (100 "
                        "labels); notebook: the notebook's SVHN setup (default: %(default)s)")
    for f in dataclasses.fields(TrainConfig):
        if f.name == "recipe":
            continue
        meta = f.metadata
        if meta["negate"]:
            parser.add_argument(meta["negate"], dest=f.name, action="store_false",
                                default=argparse.SUPPRESS, help=meta["help"])
        elif f.type in ("bool", bool):
            parser.add_argument("--" + f.name.replace("_", "-"), action="store_true",
                                default=argparse.SUPPRESS, help=meta["help"] + _shown_default(f))
        else:
            kind = {"int": int, "float": float}.get(str(f.type), str)
            parser.add_argument("--" + f.name.replace("_", "-"), type=kind,
                                default=argparse.SUPPRESS, choices=meta["choices"],
                                help=meta["help"] + _shown_default(f))


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The run ``ssgan train`` was asked for: the recipe's preset, then the flags given."""
    names = {f.name for f in dataclasses.fields(TrainConfig)} - {"recipe"}
    return config_for(args.recipe, **{k: v for k, v in vars(args).items() if k in names})


KEPT = "the last finished epoch's checkpoint is kept"
# what a collective raises when a peer rank is gone (gloo reports a plain RuntimeError)
PEER_FAILURE_SIGNS = ("Connection closed by peer", "Connection reset by peer", "gloo", "NCCL",
                      "Timed out", "timed out")


def out_of_memory(err: BaseException) -> bool:
    """Whether ``err`` is an allocation failure, on a GPU or on the host."""
    return isinstance(err, (torch.OutOfMemoryError, MemoryError)) or (
        isinstance(err, RuntimeError) and "can't allocate memory" in str(err))


def _peer_failure(err: RuntimeError) -> bool:
    return isinstance(err, torch.distributed.DistError) or any(
        sign in str(err) for sign in PEER_FAILURE_SIGNS)


def _cmd_train(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    try:
        Trainer(cfg).fit()  # ends with the one-line summary; summary.json holds it for scripts
    except TrainingError:
        raise  # its message names its cause (a non-finite loss, a bad label) on any rank
    except (RuntimeError, MemoryError) as err:
        if out_of_memory(err):
            raise TrainingError(f"out of memory ({first_line(err)}); {KEPT}: lower "
                                "--batch-size (and --eval-batch-size), then --resume") from None
        if not _peer_failure(err) or not distributed.current().active:
            raise
        group = distributed.current()
        # under torchrun, a collective whose peer died: one line, not a traceback
        raise TrainingError(f"rank {group.rank} of {group.world} stopped: {first_line(err)}. "
                            f"Another process died and this one stopped with it; {KEPT} "
                            "(restart with --resume, or launch with torchrun --max-restarts=K "
                            "to restart by itself)") from None
    finally:
        distributed.leave()  # under torchrun: the process group's resources
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    with K.use_backend(args.kernels):
        result = evaluate_checkpoint(args.checkpoint, device=args.device,
                                     eval_bn=args.eval_bn, data_dir=args.data_dir)
    print(json.dumps(result))
    return 0


def _cmd_sample(args: argparse.Namespace) -> int:
    if args.n < 1:
        raise ValueError(f"--n must be >= 1, got {args.n}")
    device = resolve_device(args.device)
    state = checkpoints.load(args.checkpoint)
    cfg = checkpoints.train_config(state, args.checkpoint)
    with checkpoints.building_from(checkpoints.resolve(args.checkpoint)):
        g = Generator(cfg.z_dim, state["channels"], state["image_size"], cfg.g_size_mult,
                      cfg.alpha).to(device)
        g.load_state_dict(state["generator"])
    g.eval()
    generator = torch.Generator().manual_seed(args.seed)
    z = (torch.rand(args.n, cfg.z_dim, generator=generator) * 2 - 1).to(device)
    with torch.no_grad(), K.use_backend(args.kernels):
        images = g(z)
    print(plots.image_grid(images, args.out))
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    summary = predict(args.checkpoint, args.paths, args.out, batch_size=args.batch_size,
                      device=args.device, skip_unreadable=args.skip_unreadable,
                      progress=not args.no_progress)
    for path in summary["skipped"]:
        print(f"ssgan predict: skipped unreadable image {path}", file=sys.stderr)
    counts = ", ".join(f"{name}: {n}" for name, n in summary["counts"].items())
    skipped = f", {len(summary['skipped'])} unreadable skipped" if summary["skipped"] else ""
    print(f"ssgan predict: {summary['images']} images{skipped} -> {summary['out']} | {counts}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    print(f"ssgan export: wrote {export_classifier(args.checkpoint, args.out)}")
    return 0


CHECKPOINT_HELP = "a run folder (its checkpoints/last.pt) or a checkpoint file"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ssgan", description="Semi-supervised GAN training with fused Triton kernels.")
    parser.add_argument("--version", action="version", version=f"ssgan {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train a semi-supervised GAN",
                           description="Train. With no flags: TrainConfig(), the improved "
                           "recipe on the bundled MNIST subset (100 labels, offline). The "
                           "notebook's SVHN setup: --recipe notebook.")
    _add_config_flags(train)
    train.set_defaults(func=_cmd_train)
    ev = sub.add_parser("eval", help="test accuracy of a checkpoint")
    ev.add_argument("checkpoint", help=CHECKPOINT_HELP)
    ev.add_argument("--data-dir", help="dataset folder, if it moved since training")
    ev.add_argument("--eval-bn", choices=EVAL_BN_MODES, help="override the run's choice")
    ev.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    ev.add_argument("--kernels", default="auto", choices=K.BACKENDS)
    ev.set_defaults(func=_cmd_eval)
    sa = sub.add_parser("sample", help="write a grid of generated images")
    sa.add_argument("checkpoint", help=CHECKPOINT_HELP)
    sa.add_argument("--n", type=int, default=64, help="number of images (default: 64)")
    sa.add_argument("--out", default="samples.png", help="PNG path (default: samples.png)")
    sa.add_argument("--seed", type=int, default=0, help="noise seed (default: 0)")
    sa.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    sa.add_argument("--kernels", default="auto", choices=K.BACKENDS)
    sa.set_defaults(func=_cmd_sample)
    pr = sub.add_parser("predict", help="classify image files into a CSV",
                        description="Classify images with a run's classifier (the weights and "
                        "BatchNorm statistics its last evaluation used).")
    pr.add_argument("checkpoint", help=CHECKPOINT_HELP)
    pr.add_argument("paths", nargs="+", help="image files, or folders searched recursively")
    pr.add_argument("--out", default="predictions.csv",
                    help="CSV path (default: predictions.csv)")
    pr.add_argument("--batch-size", type=int, default=256, help="images per batch "
                    "(default: 256)")
    pr.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    pr.add_argument("--skip-unreadable", action="store_true",
                    help="skip images that cannot be read (listed on stderr) instead of "
                    "stopping")
    pr.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    pr.set_defaults(func=_cmd_predict)
    ex = sub.add_parser("export", help="write the classifier as a standalone torch.export "
                        "program", description="Write the classifier as a torch.export "
                        "program (.pt2) of ATen ops only: load it with "
                        "torch.export.load(path).module() without ssgan.")
    ex.add_argument("checkpoint", help=CHECKPOINT_HELP)
    ex.add_argument("--out", default="classifier.pt2", help="path (default: classifier.pt2)")
    ex.set_defaults(func=_cmd_export)
    return parser


class Stopped(KeyboardInterrupt):
    """SIGTERM (a scheduler, a preempted machine), raised where the process is, as SIGINT
    raises KeyboardInterrupt: checkpoints are written atomically, so the last good one stays."""


def _raise_stopped(signum, frame) -> None:
    raise Stopped()


def _handle_sigterm(handler):
    """Installs ``handler`` for SIGTERM and returns the previous one; only the main thread
    may, so elsewhere (a caller's worker thread) SIGTERM keeps its handler."""
    if handler is None:
        return None
    try:
        return signal.signal(signal.SIGTERM, handler)
    except ValueError:
        return None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    previous = _handle_sigterm(_raise_stopped)
    try:
        return args.func(args)
    except (DataError, TrainingError, ValueError) as err:
        print(f"ssgan {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as stop:
        why = "stopped by SIGTERM" if isinstance(stop, Stopped) else "interrupted"
        kept = f"; {KEPT} (continue with --resume)" if args.command == "train" else ""
        print(f"ssgan {args.command}: {why}{kept}", file=sys.stderr)
        return 128 + (signal.SIGTERM if isinstance(stop, Stopped) else signal.SIGINT)
    finally:
        _handle_sigterm(previous)


if __name__ == "__main__":
    sys.exit(main())
