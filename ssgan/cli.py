"""``ssgan`` command line: ``train``, ``eval CHECKPOINT`` and ``sample CHECKPOINT``."""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys

import torch

import ssgan.kernels as K
from ssgan import __version__, plots
from ssgan import checkpoints
from ssgan.config import RECIPES, TrainConfig, config_for
from ssgan.data import DataError
from ssgan.devices import resolve_device
from ssgan.evaluation import evaluate_checkpoint
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


def _cmd_train(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    Trainer(cfg).fit()  # ends with the one-line summary; summary.json holds it for scripts
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
    cfg = TrainConfig(**state["config"])
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
    ev.add_argument("checkpoint", help="a run's checkpoints/last.pt")
    ev.add_argument("--data-dir", help="dataset folder, if it moved since training")
    ev.add_argument("--eval-bn", choices=EVAL_BN_MODES, help="override the run's choice")
    ev.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    ev.add_argument("--kernels", default="auto", choices=K.BACKENDS)
    ev.set_defaults(func=_cmd_eval)
    sa = sub.add_parser("sample", help="write a grid of generated images")
    sa.add_argument("checkpoint", help="a run's checkpoints/last.pt")
    sa.add_argument("--n", type=int, default=64, help="number of images (default: 64)")
    sa.add_argument("--out", default="samples.png", help="PNG path (default: samples.png)")
    sa.add_argument("--seed", type=int, default=0, help="noise seed (default: 0)")
    sa.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    sa.add_argument("--kernels", default="auto", choices=K.BACKENDS)
    sa.set_defaults(func=_cmd_sample)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (DataError, TrainingError, ValueError) as err:
        print(f"ssgan {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; the last finished epoch's checkpoint is kept (continue with "
              "--resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
