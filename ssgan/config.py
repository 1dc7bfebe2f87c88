"""Every setting of a run, written once: :class:`TrainConfig`'s fields carry their defaults, their
``ssgan train`` help and their choices, and :data:`RECIPES` holds presets as overrides of them.

``TrainConfig()`` is what a bare ``ssgan train`` runs: the improved recipe on the bundled MNIST
subset. The CLI builds its flags from the fields' metadata, so a new setting is one field here.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ssgan.cuda_graph import CUDA_GRAPH_MODES
from ssgan.precision import PRECISIONS
from ssgan.data import DATASETS, LABEL_SELECTIONS, Dataset, default_location, load_dataset
from ssgan.models import EVAL_BN_MODES
from ssgan.kernels import BACKENDS

LABELED_BATCH_TERMS = ("all", "supervised")
LR_SCHEDULES = ("exponential", "constant", "linear")


def setting(default: Any, help: str, *, choices: tuple | None = None,
            negate: str | None = None) -> Any:
    """A config field with its CLI help. ``negate`` names the flag that turns a True default
    off (``--no-download``); other bools are ``--flag`` switches that turn them on."""
    return field(default=default, metadata={"help": help, "choices": choices, "negate": negate})


@dataclass
class TrainConfig:
    """Every setting of a run; the defaults are the improved recipe on the bundled MNIST
    subset (:data:`RECIPES` ``improved``). Empty ``data_dir`` / ``mnist_train_prefix`` mean
    the dataset's default (:func:`ssgan.data.default_location`)."""
    recipe: str = setting("improved", "the preset these values started from (a record)")
    dataset: str = setting("mnist", "svhn (train_32x32.mat/test_32x32.mat), mnist (IDX .gz "
                           "files) or folder (DIR/<class>/*, DIR/unlabeled/*, optional "
                           "DIR/test/<class>/*)", choices=DATASETS)
    data_dir: str = setting("", "folder holding the dataset files (default: the bundled MNIST "
                            "subset for mnist, data/svhn for svhn)")
    out_dir: str = setting("runs", "where run folders are created")
    name: str = setting("", "run folder name under --out-dir (default: DATASET-NLABELSlabels)")
    download: bool = setting(True, "never try to download missing SVHN or MNIST files",
                             negate="--no-download")
    verify_md5: bool = setting(True, "accept .mat files whose MD5 differs from the official one",
                               negate="--skip-md5")
    mnist_train_prefix: str = setting("", "MNIST training file prefix, e.g. train-5k for "
                                      "train-5k-images-idx3-ubyte.gz (default: train-5k for the "
                                      "bundled data, train with --data-dir)")
    mnist_test_prefix: str = setting("t10k", "MNIST test file prefix")
    image_size: int = setting(32, "image side for --dataset folder (a multiple of 8)")
    channels: int = setting(3, "1 (grayscale) or 3 (RGB) for --dataset folder")
    labels: int = setting(100, "how many training labels the model may use")
    label_selection: str = setting("balanced", "first: the first N (the notebook); balanced: "
                                   "N/classes per class, seeded", choices=LABEL_SELECTIONS)
    labeled_batch_size: int = setting(64, "extra labeled examples drawn per step for the "
                                      "supervised term (0 = the notebook's masked batches only)")
    labeled_batch_terms: str = setting(
        "supervised", "what the --labeled-batch-size images feed: all (they join the real "
        "batch: supervised term, real-vs-fake loss, BatchNorm statistics and feature matching) "
        "or supervised (Improved GAN: a separate pass for the supervised term only)",
        choices=LABELED_BATCH_TERMS)
    supervised_only: bool = setting(False, "baseline: train the discriminator on the labeled "
                                    "examples alone")
    batch_size: int = setting(128, "images per step")
    epochs: int = setting(100, "passes over the training set")
    lr: float = setting(1e-3, "Adam learning rate for both players")
    beta1: float = setting(0.5, "Adam beta1")
    lr_decay: float = setting(0.9, "learning-rate factor applied after every epoch "
                              "(--lr-schedule exponential)")
    lr_schedule: str = setting("constant", "exponential (times --lr-decay after every epoch), "
                               "constant, or linear (constant for the first half, then down to "
                               "0 at the last step)", choices=LR_SCHEDULES)
    augment_shift: int = setting(2, "random translation of real training images by up to this "
                                 "many pixels, done on the device (0 = off)")
    ema_decay: float = setting(0.995, "evaluate an exponential moving average of D's weights "
                               "with this decay per step (0 = off)")
    unlabeled_weight: float = setting(1.0, "weight of the real-vs-fake (unlabeled and "
                                      "generated) terms of D's loss")
    entropy_weight: float = setting(0.3, "weight of the entropy of D's class prediction on the "
                                    "real batch (Bad GAN's entropy minimisation; 0 = off)")
    z_dim: int = setting(100, "generator noise size")
    d_size_mult: int = setting(64, "discriminator width")
    g_size_mult: int = setting(32, "generator width")
    drop_rate: float = setting(0.5, "discriminator dropout (input dropout is drop_rate/2.5)")
    alpha: float = setting(0.2, "leaky-ReLU slope")
    extra_class: bool = setting(False, "give the discriminator an explicit 11th fake-class "
                                "logit")
    eval_bn: str = setting("recalibrated", "BatchNorm at evaluation: running statistics of real "
                           "data, recalibrated (re-estimated on real data with dropout off), or "
                           "batch (the notebook)", choices=EVAL_BN_MODES)
    eval_batch_size: int = setting(1000, "batch size of evaluation with --eval-bn running or "
                                   "recalibrated")
    refresh_every: int = setting(10, "steps between progress-bar refreshes and non-finite-loss "
                                 "checks (each reads the device once; a GPU runs ahead in "
                                 "between)")
    eval_every: int = setting(5, "measure accuracy every N epochs (and after the last); "
                              "evaluation re-estimates BatchNorm statistics on the training "
                              "set, so it costs time")
    seed: int = setting(0, "random seed (labels, batches, noise, dropout)")
    device: str = setting("auto", "auto, cpu, cuda or cuda:N")
    precision: str = setting("fp32", "fp32, or bf16: mixed precision (bf16 convolutions and "
                             "linear layers under autocast; fp32 weights, optimizer state, "
                             "BatchNorm statistics and losses); needs native bf16 (AVX512-BF16 "
                             "or AMX on a CPU, sm_80+ on a GPU)", choices=PRECISIONS)
    cuda_graph: str = setting("auto", "auto: on a CUDA device, replay the whole training step "
                              "from one CUDA graph (falls back to eager if capture fails); "
                              "off: run it eagerly", choices=CUDA_GRAPH_MODES)
    kernels: str = setting("auto", "auto (Triton on CUDA, Inductor-compiled twins on CPU), "
                           "triton, inductor, or torch (the eager twins: the slow reference)",
                           choices=BACKENDS)
    resume: bool = setting(False, "continue the run in --out-dir/--name from its last "
                           "checkpoint")
    progress: bool = setting(True, "hide progress bars", negate="--no-progress")

    def run_dir(self) -> Path:
        return Path(self.out_dir) / (self.name or f"{self.dataset}-{self.labels}labels")


# Presets, as overrides of TrainConfig's defaults. ``notebook`` is the notebook's SVHN setup;
# how each setting of ``improved`` was chosen is in docs/training.md.
RECIPES: dict[str, dict[str, Any]] = {
    "improved": {},
    "notebook": {"dataset": "svhn", "labels": 1000, "label_selection": "first",
                 "labeled_batch_size": 0, "lr": 3e-4, "lr_schedule": "exponential",
                 "augment_shift": 0, "ema_decay": 0.0, "entropy_weight": 0.0, "epochs": 25,
                 "eval_every": 1},
}


def config_for(recipe: str = "improved", **overrides: Any) -> TrainConfig:
    """A :class:`TrainConfig` from a preset of :data:`RECIPES`, with ``overrides`` (any
    TrainConfig field) taking precedence over the preset."""
    if recipe not in RECIPES:
        raise ValueError(f"--recipe must be one of {', '.join(RECIPES)}, got {recipe!r}")
    return TrainConfig(**{**RECIPES[recipe], **overrides, "recipe": recipe})


def resolve_data_location(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with the dataset's default folder and file prefix filled in, so that
    ``config.json`` and checkpoints name the files a run actually read."""
    data_dir, prefix = default_location(cfg.dataset, cfg.data_dir, cfg.mnist_train_prefix)
    return dataclasses.replace(cfg, data_dir=data_dir, mnist_train_prefix=prefix)


def load_data(cfg: TrainConfig, *, download: bool) -> Dataset:
    """The dataset ``cfg`` names, read from where it says (:func:`ssgan.data.load_dataset`)."""
    return load_dataset(cfg.dataset, cfg.data_dir, download=download,
                        verify_md5=cfg.verify_md5, mnist_train_prefix=cfg.mnist_train_prefix,
                        mnist_test_prefix=cfg.mnist_test_prefix, image_size=cfg.image_size,
                        channels=cfg.channels)


def validate(cfg: TrainConfig, data: Dataset) -> None:
    """Raises ValueError, naming the flag to change, for a setting the data cannot serve."""
    if cfg.batch_size < 1 or cfg.batch_size > len(data.train):
        raise ValueError(f"--batch-size must be in 1..{len(data.train)} (the training set), "
                         f"got {cfg.batch_size}")
    if cfg.labeled_batch_size < 0:
        raise ValueError(f"--labeled-batch-size must be >= 0, got {cfg.labeled_batch_size}")
    for name, choices in (("labeled_batch_terms", LABELED_BATCH_TERMS),
                          ("lr_schedule", LR_SCHEDULES), ("cuda_graph", CUDA_GRAPH_MODES)):
        if getattr(cfg, name) not in choices:
            raise ValueError(f"--{name.replace('_', '-')} must be one of {', '.join(choices)}, "
                             f"got {getattr(cfg, name)!r}")
    for name in ("epochs", "refresh_every", "eval_every"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(cfg, name)}")
    if not 0 <= cfg.drop_rate < 1:
        raise ValueError(f"--drop-rate must be in [0, 1), got {cfg.drop_rate}")
    if cfg.augment_shift < 0 or cfg.augment_shift >= data.image_size // 2:
        raise ValueError(f"--augment-shift must be in 0..{data.image_size // 2 - 1} pixels, "
                         f"got {cfg.augment_shift}")
    if not 0 <= cfg.ema_decay < 1:
        raise ValueError(f"--ema-decay must be in [0, 1) (0 turns the average off), "
                         f"got {cfg.ema_decay}")
    if cfg.unlabeled_weight < 0 or cfg.entropy_weight < 0:
        raise ValueError("--unlabeled-weight and --entropy-weight must be >= 0, got "
                         f"{cfg.unlabeled_weight} and {cfg.entropy_weight}")
