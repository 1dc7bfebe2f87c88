"""``ssgan`` command line: ``train``, ``eval CHECKPOINT`` and ``sample CHECKPOINT``."""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys

import torch

import ssgan.kernels as K
from ssgan import __version__, plots
from ssgan.data import DataError
from ssgan.models import EVAL_BN_MODES, Generator
from ssgan.train import LABELED_BATCH_TERMS, LR_SCHEDULES, RECIPES, TrainConfig, Trainer, \
    TrainingError, config_for, evaluate_checkpoint, load_checkpoint_file, resolve_device

HELP = {
    "dataset": "svhn (train_32x32.mat/test_32x32.mat), mnist (IDX .gz files) or folder "
               "(DIR/<class>/*, DIR/unlabeled/*, optional DIR/test/<class>/*)",
    "data_dir": "folder holding the dataset files (default: the bundled MNIST subset for "
                "mnist, data/svhn for svhn)",
    "out_dir": "where run folders are created",
    "name": "run folder name under --out-dir (default: DATASET-NLABELSlabels)",
    "mnist_train_prefix": "MNIST training file prefix, e.g. train-5k for "
                          "train-5k-images-idx3-ubyte.gz (default: train-5k for the bundled "
                          "data, train with --data-dir)",
    "mnist_test_prefix": "MNIST test file prefix",
    "image_size": "image side for --dataset folder (a multiple of 8)",
    "channels": "1 (grayscale) or 3 (RGB) for --dataset folder",
    "labels": "how many training labels the model may use",
    "label_selection": "first: the first N (the notebook); balanced: N/classes per class, seeded",
    "labeled_batch_terms": "what the --labeled-batch-size images feed: all (they join the real "
                           "batch: supervised term, real-vs-fake loss, BatchNorm statistics and "
                           "feature matching) or supervised (Improved GAN: a separate pass for "
                           "the supervised term only)",
    "labeled_batch_size": "extra labeled examples drawn per step for the supervised term "
                          "(0 = the notebook's masked batches only)",
    "supervised_only": "baseline: train the discriminator on the labeled examples alone",
    "batch_size": "images per step",
    "epochs": "passes over the training set",
    "lr": "Adam learning rate for both players",
    "beta1": "Adam beta1",
    "lr_decay": "learning-rate factor applied after every epoch (--lr-schedule exponential)",
    "lr_schedule": "exponential (times --lr-decay after every epoch), constant, or linear "
                   "(constant for the first half, then down to 0 at the last step)",
    "augment_shift": "random translation of real training images by up to this many pixels, "
                     "done on the device (0 = off)",
    "ema_decay": "evaluate an exponential moving average of D's weights with this decay per "
                 "step (0 = off)",
    "unlabeled_weight": "weight of the real-vs-fake (unlabeled and generated) terms of D's loss",
    "entropy_weight": "weight of the entropy of D's class prediction on the real batch "
                      "(Bad GAN's entropy minimisation; 0 = off)",
    "z_dim": "generator noise size",
    "d_size_mult": "discriminator width",
    "g_size_mult": "generator width",
    "drop_rate": "discriminator dropout (input dropout is drop_rate/2.5)",
    "alpha": "leaky-ReLU slope",
    "extra_class": "give the discriminator an explicit 11th fake-class logit",
    "eval_bn": "BatchNorm at evaluation: running statistics of real data, recalibrated "
               "(re-estimated on real data with dropout off), or batch (the notebook)",
    "eval_batch_size": "batch size of evaluation with --eval-bn running",
    "eval_every": "measure accuracy every N epochs (and after the last); evaluation "
                  "re-estimates BatchNorm statistics on the training set, so it costs time",
    "refresh_every": "steps between progress-bar refreshes and non-finite-loss checks (each "
                     "reads the device once; a GPU runs ahead in between)",
    "seed": "random seed (labels, batches, noise, dropout)",
    "device": "auto, cpu, cuda or cuda:N",
    "kernels": "auto (Triton on CUDA, Inductor-compiled twins on CPU), triton, inductor, or "
               "torch (the eager twins: the slow reference)",
    "resume": "continue the run in --out-dir/--name from its last checkpoint",
}
NEGATED = {"download": "--no-download", "verify_md5": "--skip-md5", "progress": "--no-progress"}
NEGATED_HELP = {"download": "never try to download missing SVHN or MNIST files",
                "verify_md5": "accept .mat files whose MD5 differs from the official one",
                "progress": "hide progress bars"}
CHOICES = {"labeled_batch_terms": list(LABELED_BATCH_TERMS),
           "dataset": ["svhn", "mnist", "folder"], "label_selection": ["first", "balanced"],
           "eval_bn": list(EVAL_BN_MODES), "lr_schedule": list(LR_SCHEDULES), "kernels": list(K._backend.BACKENDS)}


HELP_NAMES_DEFAULT_IN_TEXT = {"name", "data_dir", "mnist_train_prefix"}


def _recipe_defaults(name: str) -> str:
    """' (default: X)', or ' (improved: X, notebook: Y)' where the recipes differ."""
    if name in HELP_NAMES_DEFAULT_IN_TEXT:
        return ""
    values = {recipe: getattr(config_for(recipe), name) for recipe in RECIPES}
    if len(set(map(repr, values.values()))) > 1:
        return " (" + ", ".join(f"{recipe}: {value}" for recipe, value in values.items()) + ")"
    value = values[next(iter(RECIPES))]
    return "" if value is False or value == "" else f" (default: {value})"


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field. Flags default to absent, so that a recipe's preset
    applies unless the flag is given."""
    parser.add_argument("--recipe", choices=list(RECIPES), default="improved",
                        help="preset of every setting below; explicit flags override it. "
                        "improved: the measured recipe on the bundled MNIST subset (100 "
                        "labels); notebook: the notebook's SVHN setup (default: improved)")
    for f in dataclasses.fields(TrainConfig):
        if f.name == "recipe":
            continue
        if f.name in NEGATED:
            parser.add_argument(NEGATED[f.name], dest=f.name, action="store_false",
                                default=argparse.SUPPRESS, help=NEGATED_HELP[f.name])
        elif f.type in ("bool", bool):
            parser.add_argument("--" + f.name.replace("_", "-"), action="store_true",
                                default=argparse.SUPPRESS,
                                help=HELP[f.name] + _recipe_defaults(f.name))
        else:
            kind = {"int": int, "float": float}.get(str(f.type), str)
            parser.add_argument("--" + f.name.replace("_", "-"), type=kind,
                                default=argparse.SUPPRESS, choices=CHOICES.get(f.name),
                                help=HELP[f.name] + _recipe_defaults(f.name))


def _cmd_train(args: argparse.Namespace) -> int:
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    names.discard("recipe")
    cfg = config_for(args.recipe, **{k: v for k, v in vars(args).items() if k in names})
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
    state = load_checkpoint_file(args.checkpoint)
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
                           description="Train. With no flags: the improved recipe on the "
                           "bundled MNIST subset (100 labels, offline). The notebook's SVHN "
                           "setup: --recipe notebook.")
    _add_config_flags(train)
    train.set_defaults(func=_cmd_train)
    ev = sub.add_parser("eval", help="test accuracy of a checkpoint")
    ev.add_argument("checkpoint", help="a run's checkpoints/last.pt")
    ev.add_argument("--data-dir", help="dataset folder, if it moved since training")
    ev.add_argument("--eval-bn", choices=EVAL_BN_MODES, help="override the run's choice")
    ev.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    ev.add_argument("--kernels", default="auto", choices=CHOICES["kernels"])
    ev.set_defaults(func=_cmd_eval)
    sa = sub.add_parser("sample", help="write a grid of generated images")
    sa.add_argument("checkpoint", help="a run's checkpoints/last.pt")
    sa.add_argument("--n", type=int, default=64, help="number of images (default: 64)")
    sa.add_argument("--out", default="samples.png", help="PNG path (default: samples.png)")
    sa.add_argument("--seed", type=int, default=0, help="noise seed (default: 0)")
    sa.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    sa.add_argument("--kernels", default="auto", choices=CHOICES["kernels"])
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
