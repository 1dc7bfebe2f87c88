"""The trainer: one readable loop (nanoGPT style), configured by :class:`TrainConfig`.

Per step: draw a batch by an on-device permutation, sample z on the device, run G once and D on
real and generated data once, and update both players simultaneously from that one forward pass
(the notebook's recipe). Per epoch: evaluate, write a metrics row, a sample grid and a
checkpoint. A resumed run continues bit-exactly on CPU.

The step the loop runs is graph-ready on every device: it reads its batch indices and learning
rate from fixed device buffers that the loop refills, draws every random number on the device
from registered generators, and adds its losses into a fixed window buffer. On CUDA it is
replayed from one CUDA graph (:mod:`ssgan.cuda_graph`); elsewhere it runs eagerly.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import math
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

import ssgan.kernels as K
from ssgan import checkpoints, distributed, plots
from ssgan.kernels import _private_api
from ssgan.augment import random_translate
from ssgan.averaging import WeightAverage
from ssgan.config import TrainConfig, config_for, load_data, resolve_data_location, validate
from ssgan.cpu_memory import keep_freed_memory
from ssgan.cuda_graph import StepGraph
from ssgan.data import Dataset, check_labels, select_labeled, to_unit_range
from ssgan.devices import policy, resolve_device
from ssgan.evaluation import accuracy, eval_batch_size, eval_bn_statistics
from ssgan.losses import discriminator_loss, feature_matching_loss, head_weights
from ssgan.models import Discriminator, build_models
from ssgan.precision import (WeightCopies, StepWeights, adam_step, check_precision,
                             mixed_precision, step_dtype)

__all__ = ["METRIC_FIELDS", "TrainConfig", "Trainer", "TrainingError", "adam", "config_for",
           "scheduled_lr", "simultaneous_update", "train"]

METRIC_FIELDS = ["epoch", "lr", "d_loss", "g_loss", "supervised_loss", "train_accuracy",
                 "test_accuracy", "test_accuracy_no_ema", "step_ms", "epoch_s"]
# what a step adds into the loop's window buffer, which the host reads every --refresh-every
WINDOW_KEYS = ("d_loss", "g_loss", "supervised", "hits", "labeled")


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. a non-finite loss); the last good checkpoint is kept."""


def scheduled_lr(cfg: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """The learning rate of global step ``step`` (0-based).

    ``exponential``: ``lr * lr_decay ** epoch`` (the notebook). ``constant``: ``lr``.
    ``linear`` (Improved GAN's schedule): ``lr`` for the first half of training, then a
    straight line down towards 0, which it would reach one step after the last, so that every
    step trains: the last of ``T`` steps runs at ``2 * lr / T``."""
    if cfg.lr_schedule == "exponential":
        return cfg.lr * cfg.lr_decay ** (step // steps_per_epoch)
    if cfg.lr_schedule == "constant":
        return cfg.lr
    remaining = 1.0 - step / (cfg.epochs * steps_per_epoch)
    return cfg.lr * min(1.0, 2.0 * remaining)


def adam(params, lr: torch.Tensor, beta1: float) -> torch.optim.Adam:
    """Adam as the trainer runs it on every device: the fused implementation, reading its
    learning rate from ``lr`` (a one-element tensor on the parameters' device, of
    :attr:`ssgan.devices.DevicePolicy.lr_dtype`), which a CUDA graph's replays read anew."""
    return torch.optim.Adam(params, betas=(beta1, 0.999), fused=True, **run_adam_options(lr))


def run_adam_options(lr: torch.Tensor) -> dict:
    """The options of an Adam group that belong to the run rather than to a checkpoint: the
    ``lr`` tensor, and ``capturable`` where the device replays the step from a CUDA graph
    (PyTorch refuses to capture the step of an Adam that is not)."""
    return {"lr": lr, "capturable": policy(lr.device).cuda_graph}


def simultaneous_update(d_loss: torch.Tensor, g_loss: torch.Tensor, d: torch.nn.Module,
                        g: torch.nn.Module, opt_d: torch.optim.Optimizer,
                        opt_g: torch.optim.Optimizer,
                        weights: StepWeights | None = None) -> None:
    """Both players' gradients from one forward pass, then both optimizer steps (the
    notebook's update). ``torch.autograd.grad`` keeps each loss's gradient off the other
    player's parameters (and out of DDP's sight, so the run's group averages them
    explicitly). ``weights``: the forward's (:func:`ssgan.precision.mixed_precision`), whose
    bf16 copies are differentiated in place of their parameters."""
    weights = weights or StepWeights({})
    d_params, g_params = list(d.parameters()), list(g.parameters())
    d_grads = torch.autograd.grad(d_loss, weights.leaves(d_params), retain_graph=True)
    g_grads = torch.autograd.grad(g_loss, weights.leaves(g_params))
    if weights.kept is not None:  # Adam reads the bf16 gradients and writes the bf16 copies
        adam_step(opt_d, d_params, d_grads, weights)
        adam_step(opt_g, g_params, g_grads, weights)
        return
    params = [*d_params, *g_params]
    _set_gradients(params, weights.master_grads(params, [*d_grads, *g_grads]))
    opt_d.step()
    opt_g.step()


def _set_gradients(params: list[torch.Tensor], grads: list[torch.Tensor | None]) -> None:
    """Averages ``grads`` over the run's ranks and hands them to ``params`` as their ``.grad``
    (a None gradient leaves its parameter without one, as ``loss.backward()`` would)."""
    distributed.current().average_([grad for grad in grads if grad is not None])
    for p, grad in zip(params, grads):
        p.grad = grad


class Trainer:
    """Holds the models, optimizers and data of one run; :meth:`fit` trains it."""

    def __init__(self, cfg: TrainConfig, data: Dataset | None = None):
        cfg = self.cfg = resolve_data_location(cfg)
        self.device = distributed.join(resolve_device(cfg.device))
        check_precision(cfg.precision, self.device)
        if self.device.type == "cpu":
            keep_freed_memory()
        data = data or load_data(cfg, download=cfg.download)
        validate(cfg, data)
        distributed.validate_batches(self.group, cfg.batch_size, cfg.labeled_batch_size)
        check_labels(data)
        torch.manual_seed(cfg.seed)
        self.data = data.to(self.device)
        self.labeled_idx = select_labeled(data.train.labels, cfg.labels, cfg.label_selection,
                                          data.num_classes, cfg.seed).to(self.device)
        # labels the model may see: -1 everywhere except the chosen labeled subset
        self.train_labels = torch.full_like(self.data.train.labels, -1)
        self.train_labels[self.labeled_idx] = self.data.train.labels[self.labeled_idx]
        # each image's weight in the supervised term, the loss head's mask: gathered per step,
        # not compared and converted (one launch instead of two)
        self.labeled_weight = (self.train_labels >= 0).float()
        self.g, self.d = build_models(cfg, data, self.device)
        # the ranks' weights start equal; their dropout masks are their own
        distributed.seed_noise(self.group, cfg.seed)
        # the graph-ready step's fixed buffers: the loop refills them between steps
        self.lr = torch.tensor(cfg.lr, dtype=policy(self.device).lr_dtype, device=self.device)
        self.lr_now = cfg.lr  # what self.lr holds, known on the host without a read
        self.batch_idx = torch.zeros(cfg.batch_size // self.group.world, dtype=torch.int64,
                                     device=self.device)
        self.window = torch.zeros(len(WINDOW_KEYS), device=self.device)
        self.head_weights = head_weights(cfg.unlabeled_weight, cfg.entropy_weight, self.device)
        self.opt_d = adam(self.d.parameters(), self.lr, cfg.beta1)
        self.opt_g = adam(self.g.parameters(), self.lr, cfg.beta1)
        # bf16 copies that Adam keeps up to date, where the device decides so (one process:
        # torchrun averages the gradients in fp32 first)
        self.kept_copies = (WeightCopies(self.d, self.g) if cfg.precision == "bf16"
                            and policy(self.device).adam_writes_bf16_copies
                            and not self.group.active else None)
        # evaluation uses an exponential moving average of D's weights when --ema-decay > 0;
        # its BatchNorm buffers are averaged too (recalibrated evaluation re-estimates them)
        self.d_ema = WeightAverage(self.d, cfg.ema_decay) if cfg.ema_decay else None
        self.batch_rng = torch.Generator(self.device).manual_seed(cfg.seed)
        self.fixed_z = (torch.rand(64, cfg.z_dim, generator=torch.Generator().manual_seed(
            cfg.seed + 1)) * 2 - 1).to(self.device)
        self.epoch = 0
        self._warmup_pending = False  # set by _announce when the first step compiles kernels
        # the eval model's buffers as the last evaluation used them (predict, export)
        self.eval_buffers: dict[str, torch.Tensor] | None = None
        self.history: list[dict] = []
        self.run_dir = cfg.run_dir()

    # ------------------------------------------------------------ one step
    # The draws below are of the global batch, from the generator every rank shares; each rank
    # keeps its shard, so N ranks see exactly what one process sees.
    def _sample_z(self, n: int) -> torch.Tensor:
        """This rank's shard of ``n`` noise vectors."""
        z = torch.empty(n, self.cfg.z_dim, device=self.device,
                        dtype=step_dtype(self.cfg.precision))
        return self.group.shard(z.uniform_(-1.0, 1.0, generator=self.batch_rng))

    def _labeled_batch(self, n: int) -> torch.Tensor:
        """This rank's shard of ``n`` labeled training indices, drawn with replacement."""
        pick = torch.randint(0, self.labeled_idx.numel(), (n,), device=self.device,
                             generator=self.batch_rng)
        return self.labeled_idx[self.group.shard(pick)]

    def _real_images(self, idx: torch.Tensor) -> torch.Tensor:
        """Training images ``idx`` (this rank's shard), augmented with ``--augment-shift``, in
        [-1, 1] in the step's compute dtype, channels-first like every image tensor (see
        :class:`ssgan.devices.DevicePolicy`)."""
        images = random_translate(self.data.train.images[idx], self.cfg.augment_shift,
                                  self.batch_rng)
        return to_unit_range(images, step_dtype(self.cfg.precision))

    @property
    def group(self) -> distributed.Group:
        """The run's ranks (:func:`ssgan.distributed.current`, the one owner)."""
        return distributed.current()

    @property
    def eval_model(self) -> Discriminator:
        """The discriminator that evaluation and ``ssgan eval`` use: the weight average with
        ``--ema-decay``, D itself otherwise."""
        return self.d_ema.module if self.d_ema is not None else self.d

    def graph_ready_step(self) -> None:
        """One step on the fixed buffers: the batch ``batch_idx`` at the learning rate ``lr``,
        its losses added into ``window``. This is what a CUDA graph captures and replays."""
        losses = self.step(self.batch_idx)
        self.window += torch.stack([losses[k].detach().float() for k in WINDOW_KEYS])

    def set_lr(self, lr: float) -> None:
        """Writes ``lr`` into the optimizers' learning-rate tensor when it changes."""
        if lr != self.lr_now:
            self.lr.fill_(lr)
            self.lr_now = lr

    def step(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        """One simultaneous update of D and G; ``idx`` indexes the training set (on device).
        The optimizers take their learning rate from their param groups. The fused ops run on
        the configured ``--kernels`` backend, whoever calls the step; the forward runs in the
        configured ``--precision`` (:mod:`ssgan.precision`), the update in fp32."""
        with K.use_backend(self.cfg.kernels):
            if self.cfg.supervised_only:
                return self._supervised_step(idx)
            with mixed_precision(self.cfg.precision, self.device, self.d, self.g,
                                 kept=self.kept_copies) as weights:
                losses = self._losses(idx)
            simultaneous_update(losses["d_loss"], losses["g_loss"], self.d, self.g, self.opt_d,
                                self.opt_g, weights)
        if self.d_ema is not None:
            self.d_ema.update(self.d)
        return losses

    def _losses(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        """The step's forward: both players' losses and the batch's hits.

        D sees the segments real, fake and, where the recipe has a separate labeled batch, the
        labeled images: in one pass over their concatenation or one pass per segment (the
        device's ``one_pass_discriminator``), the same function either way, since each
        segment's BatchNorm uses its own statistics and only the real one moves the running
        statistics. One fused op then computes every D loss term from the class logits."""
        cfg = self.cfg
        extra = self._labeled_batch(cfg.labeled_batch_size) if cfg.labeled_batch_size else None
        separate = extra is not None and cfg.labeled_batch_terms == "supervised"
        if extra is not None and not separate:
            idx = torch.cat([idx, extra])
        sup_idx = extra if separate else idx
        images = [self._real_images(idx), self.g(self._sample_z(cfg.batch_size))]
        if separate:
            # Improved GAN: the labeled batch feeds the supervised term alone
            images.append(self._real_images(extra))
        segments = tuple(image.shape[0] for image in images)
        if policy(self.device).one_pass_discriminator:
            class_logits, features = self.d.classify(torch.cat(images), segments)
            feat_real, feat_fake = features[:segments[0]], features[segments[0]:sum(segments[:2])]
        else:
            outputs = [self.d.classify(image, update_stats=i == 0)
                       for i, image in enumerate(images)]
            class_logits = torch.cat([logits for logits, _ in outputs])
            feat_real, feat_fake = outputs[0][1], outputs[1][1]
        labels, labeled = self.train_labels[sup_idx], self.labeled_weight[sup_idx]
        head = K.gan_loss_head(class_logits, labels, labeled, segments=segments,
                               extra_class=cfg.extra_class)
        losses = discriminator_loss(head, self.head_weights, self.group.labeled_share(labeled))
        losses["g_loss"] = feature_matching_loss(
            feat_real, feat_fake, self.group.batch_mean if self.group.active else None)
        return losses

    def _supervised_step(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        """Baseline: the same D trained on labeled examples only, no GAN terms."""
        idx = self._labeled_batch(min(self.cfg.batch_size, self.labeled_idx.numel()))
        labels, labeled = self.train_labels[idx], self.labeled_weight[idx]
        with mixed_precision(self.cfg.precision, self.device, self.d) as weights:
            class_real, _, _ = self.d(self._real_images(idx))
            loss = K.masked_cross_entropy(class_real, labels, labeled)
        share = self.group.labeled_share(labeled)
        loss = loss * share if share is not None else loss
        params = list(self.d.parameters())
        _set_gradients(params, weights.master_grads(params, torch.autograd.grad(
            loss, weights.leaves(params), allow_unused=True)))
        self.opt_d.step()
        if self.d_ema is not None:
            self.d_ema.update(self.d)
        zero = torch.zeros((), device=self.device)
        return {"d_loss": loss, "supervised": loss, "g_loss": zero,
                **self._batch_hits(class_real, labels)}

    def _batch_hits(self, class_logits: torch.Tensor, labels: torch.Tensor
                    ) -> dict[str, torch.Tensor]:
        """Correct predictions and count on the batch's labeled rows, for the progress bar."""
        labeled = labels >= 0
        pred = class_logits.detach()[:, :self.data.num_classes].argmax(1)
        return {"hits": ((pred == labels) & labeled).sum().float(),
                "labeled": labeled.sum().float()}

    # ------------------------------------------------------------ epochs
    def fit(self) -> list[dict]:
        """Trains to ``cfg.epochs`` (continuing from a checkpoint with ``resume``); returns the
        metrics of every epoch."""
        cfg, main = self.cfg, self.group.is_main
        start_mode = self._start_mode()
        if start_mode == "resume":
            self.load_checkpoint(self.run_dir / checkpoints.LAST)
        if main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            if start_mode == "restart-fresh":
                (self.run_dir / "metrics.csv").unlink(missing_ok=True)
            (self.run_dir / "config.json").write_text(json.dumps(dataclasses.asdict(cfg),
                                                                 indent=2))
        start = time.perf_counter()
        # created once per run: a captured graph keeps the addresses of what it touches
        self.graph_step = StepGraph(self.graph_ready_step, self.device,
                                    capture=cfg.cuda_graph == "auto"
                                    and policy(self.device).cuda_graph,
                                    generators=[self.batch_rng])
        with K.use_backend(cfg.kernels), K.deferred_target_checks() as target_check:
            self._announce()
            while self.epoch < cfg.epochs:
                self._train_epoch(target_check)
        if main:
            plots.accuracy_curves(self.history, self.run_dir / "accuracy.png",
                                  title=f"{self.run_dir.name}: accuracy per epoch")
            self._summarize(time.perf_counter() - start)
        return self.history

    def _start_mode(self) -> str:
        """``fresh``, ``resume`` or ``restart-fresh`` (torchrun restarted the group before its
        first checkpoint). Rank 0 alone reads the run folder and decides, and every rank
        follows its decision: the ranks of several nodes need not share a disk, and ranks
        that took different branches would wait on each other's collectives until the
        timeout. A run folder that already holds a run, without ``--resume``, is an error on
        every rank."""
        decision = None
        if self.group.is_main:
            has_checkpoint = (self.run_dir / checkpoints.LAST).exists()
            # a group that torchrun restarted after a failure continues from the last checkpoint
            restarted = distributed.restarted_by_torchrun()
            if self.cfg.resume or (restarted and has_checkpoint):
                decision = ("resume", None)
            elif restarted:
                decision = ("restart-fresh", None)
            elif (self.run_dir / "metrics.csv").exists():
                decision = (None, f"{self.run_dir} already holds a run; pass --resume to "
                            "continue it, or choose another --name")
            else:
                decision = ("fresh", None)
        mode, error = self.group.broadcast_object(decision)
        if error:
            raise ValueError(error)
        return mode

    def _say(self, line: str) -> None:
        """Prints ``line`` on rank 0 (every rank computes the same figures)."""
        if self.group.is_main:
            tqdm.write(line)

    def _summarize(self, wall_s: float) -> None:
        """Writes ``summary.json`` and prints the run's one-line summary."""
        last = self.history[-1]
        plot_paths = [self.run_dir / "accuracy.png"]
        if not self.cfg.supervised_only:
            plot_paths.append(self.run_dir / "samples" / f"epoch_{self.epoch:03d}.png")
        summary = {"run_dir": str(self.run_dir), "recipe": self.cfg.recipe,
                   "epochs": last["epoch"], "test_accuracy": last["test_accuracy"],
                   "train_accuracy": last["train_accuracy"], "wall_s": round(wall_s, 1),
                   "plots": [str(p) for p in plot_paths]}
        (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        self._say(f"ssgan: done: test accuracy {100 * last['test_accuracy']:.2f}% after "
                  f"{last['epoch']} epochs, {wall_s / 60:.1f} min | run {self.run_dir} | "
                  f"plots {', '.join(summary['plots'])}")

    def _announce(self) -> None:
        """One line saying what is about to run, so a user can catch a wrong setup early."""
        data, cfg = self.data, self.cfg
        test = len(data.test) if data.test is not None else 0
        kernels = K.backend_for(data.train.images)
        backend = "nccl" if self.device.type == "cuda" else "gloo"
        ranks = f", {self.group.world} processes ({backend})" if self.group.active else ""
        self._say(f"ssgan: {cfg.dataset} {len(data.train)} train images "
                  f"({self.labeled_idx.numel()} labeled, {data.num_classes} classes), {test} test"
                  f" | device {self.device}, kernels {kernels}"
                  f"{', bf16 mixed precision' if cfg.precision == 'bf16' else ''}"
                  f"{', CUDA graph' if self.graph_step.capture else ''}{ranks}"
                  f" | {len(data.train) // cfg.batch_size} steps/epoch, epochs "
                  f"{self.epoch + 1}..{cfg.epochs} | {self.run_dir}")
        self._warmup_pending = kernels != "torch"
        if kernels == "inductor":
            self._say("ssgan: the first steps compile the CPU kernels with Inductor (once: "
                      f"Inductor caches them in {_private_api.inductor_cache_dir()} for later "
                      "runs)")

    def _train_epoch(self, target_check: K.DeferredTargetCheck) -> None:
        """One pass over the training set. The host reads the device every
        ``--refresh-every`` steps (and after the last): the summed losses of the window, for
        the progress bar and the non-finite check, and the target-range flag, in one read."""
        cfg, n = self.cfg, len(self.data.train)
        self.g.train()
        self.d.train()
        steps = n // cfg.batch_size
        perm = torch.randperm(n, device=self.device, generator=self.batch_rng)  # every rank's
        window = self.window  # zero: every refresh below empties it
        totals = dict.fromkeys(WINDOW_KEYS, 0.0)
        bar = tqdm(range(steps), desc=f"epoch {self.epoch + 1}/{cfg.epochs}", leave=False,
                   disable=not cfg.progress or not self.group.is_main)
        start = time.perf_counter()
        window_start = 0
        for i in bar:
            self.set_lr(scheduled_lr(cfg, self.epoch * steps + i, steps))
            self.batch_idx.copy_(self.group.shard(perm[i * cfg.batch_size:
                                                       (i + 1) * cfg.batch_size]))
            self.graph_step()
            if self._warmup_pending:
                self._warmup_pending = False
                self._say(f"ssgan: first step took {time.perf_counter() - start:.1f} s "
                          "(compilation included); the rest run at full speed")
            if (i + 1) % cfg.refresh_every and i + 1 < steps:
                continue
            # summed over the ranks: each rank's losses are means over its shard
            *values, bad_target = self.group.sum_(torch.cat([window, target_check.flagged().to(
                window.device)])).tolist()
            values[:3] = [v / self.group.world for v in values[:3]]
            self._check_window(values[:3], bad_target, window_start + 1, i + 1)
            for k, v in zip(WINDOW_KEYS, values):
                totals[k] += v
            window.zero_()
            window_start = i + 1
            done = i + 1
            bar.set_postfix(d=f"{totals['d_loss'] / done:.3f}",
                            g=f"{totals['g_loss'] / done:.3f}",
                            sup=f"{totals['supervised'] / done:.3f}",
                            acc=f"{totals['hits'] / max(1.0, totals['labeled']):.3f}")
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        epoch_s = time.perf_counter() - start
        self.epoch += 1
        self._record(self._evaluate(totals, steps, epoch_s))

    def _check_window(self, loss_sums: list[float], bad_target: float, first: int,
                      last: int) -> None:
        """Stops on a non-finite loss or an out-of-range labeled target seen in steps
        ``first``..``last`` of the current epoch; the last good checkpoint stays."""
        where = f"epoch {self.epoch + 1}, steps {first}..{last}"
        keep = f"The last good checkpoint is kept in {self.run_dir / checkpoints.LAST.parent}"
        if not all(math.isfinite(v) for v in loss_sums):
            raise TrainingError(
                f"non-finite loss at {where} (summed over the steps: " + ", ".join(
                    f"{k}={v}" for k, v in zip(("d_loss", "g_loss", "supervised"), loss_sums))
                + f"). {keep}; lower --lr or check the data, then --resume")
        if bad_target:
            raise TrainingError(f"a labeled target outside [0, {self.data.num_classes}) reached "
                                f"the loss at {where}. {keep}; fix the labels")

    def _evaluate(self, sums: dict, steps: int, epoch_s: float) -> dict:
        """The epoch's metrics row. Accuracies are measured every ``--eval-every`` epochs and
        after the last (NaN in between); with ``--ema-decay``, the last epoch also measures D
        without the average (``test_accuracy_no_ema``), to show what the average buys."""
        cfg, data = self.cfg, self.data
        row = {"epoch": self.epoch, "lr": self.lr_now,
               "d_loss": sums["d_loss"] / steps, "g_loss": sums["g_loss"] / steps,
               "supervised_loss": sums["supervised"] / steps, "train_accuracy": math.nan,
               "test_accuracy": math.nan, "step_ms": 1000 * epoch_s / steps, "epoch_s": epoch_s}
        last = self.epoch == cfg.epochs
        if self.epoch % cfg.eval_every == 0 or last:
            d = self.eval_model
            with eval_bn_statistics(d, cfg, data.train.images):
                row["train_accuracy"] = accuracy(d, data.train.images[self.labeled_idx],
                                                 data.train.labels[self.labeled_idx],
                                                 eval_batch_size(cfg), data.num_classes)
                row["test_accuracy"] = self._test_accuracy(d)
                self.eval_buffers = {name: buf.clone() for name, buf in d.named_buffers()}
            if last and self.d_ema is not None:
                with eval_bn_statistics(self.d, cfg, data.train.images):
                    row["test_accuracy_no_ema"] = self._test_accuracy(self.d)
        self._say(f"epoch {self.epoch}/{cfg.epochs}  train acc {row['train_accuracy']:.4f}  "
                  f"test acc {row['test_accuracy']:.4f}  d {row['d_loss']:.4f}  "
                  f"g {row['g_loss']:.4f}  {row['step_ms']:.1f} ms/step  {epoch_s:.1f} s")
        return row

    def _test_accuracy(self, d: Discriminator) -> float:
        test = self.data.test
        if test is None or not len(test):
            return float("nan")
        return accuracy(d, test.images, test.labels, eval_batch_size(self.cfg),
                        self.data.num_classes)

    def _record(self, row: dict) -> None:
        """Appends the metrics row, writes the sample grid and then the checkpoint, so a
        checkpoint never refers to an epoch whose outputs are missing."""
        self.history.append(row)
        rng_ranks = self.group.gather_objects(checkpoints.default_rng_states(self.device))
        if not self.group.is_main:
            return
        path = self.run_dir / "metrics.csv"
        new = not path.exists()
        with open(path, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=METRIC_FIELDS)
            if new:
                writer.writeheader()
            writer.writerow(row)
        if not self.cfg.supervised_only:
            self.g.eval()
            with torch.no_grad():
                samples = self.g(self.fixed_z)
            self.g.train()
            plots.image_grid(samples, self.run_dir / "samples" / f"epoch_{self.epoch:03d}.png")
        self.save_checkpoint(self.run_dir / checkpoints.LAST, rng_ranks)

    # ------------------------------------------------------------ checkpoints
    def save_checkpoint(self, path: Path, rng_ranks: list | None = None) -> None:
        """Writes the run's state; ``rng_ranks`` holds every rank's default generators
        (:func:`ssgan.checkpoints.default_rng_states`, in rank order) in a torchrun run."""
        checkpoints.save({
            "epoch": self.epoch, "config": dataclasses.asdict(self.cfg),
            "generator": self.g.state_dict(), "discriminator": self.d.state_dict(),
            "discriminator_ema": self.d_ema.state_dict() if self.d_ema is not None else {},
            "opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict(),
            "history": self.history, "num_classes": self.data.num_classes,
            "class_names": self.data.class_names, "channels": self.data.channels,
            "image_size": self.data.image_size,
            **({"eval_buffers": self.eval_buffers} if self.eval_buffers is not None else {}),
            **checkpoints.rng_states(self.device, self.batch_rng),
            "world_size": self.group.world, "rng_ranks": rng_ranks or []}, path)

    def load_checkpoint(self, path: Path) -> None:
        hint = "start without --resume, or give the --name/--out-dir of the run to continue"
        # rank 0 reads the file and sends it, or the reason it cannot, so that every rank
        # stops alike: the ranks of several nodes share no disk
        state, error = None, None
        if self.group.is_main:
            try:
                state = checkpoints.load(path, hint=hint)
            except ValueError as err:
                error = str(err)
        state, error = self.group.broadcast_object((state, error))
        if error:
            raise ValueError(error)
        with checkpoints.building_from(path):
            self.g.load_state_dict(state["generator"])
            self.d.load_state_dict(state["discriminator"])
            if self.d_ema is not None:
                self.d_ema.load_state_dict(state["discriminator_ema"])
            self.opt_g.load_state_dict(state["opt_g"])
            self.opt_d.load_state_dict(state["opt_d"])
            for group in (*self.opt_d.param_groups, *self.opt_g.param_groups):
                group.update(run_adam_options(self.lr))  # loading replaced them
            self.epoch, self.history = state["epoch"], state["history"]
            self.eval_buffers = state.get("eval_buffers")
            checkpoints.restore_rng_states(state, self.batch_rng)
            self._restore_noise(state)
        saved = state["config"].get("precision", "fp32")
        if saved != self.cfg.precision:
            self._say(f"ssgan: resuming a {saved} checkpoint with --precision "
                      f"{self.cfg.precision}: weights and optimizer state are fp32 in both, so "
                      "the run continues from them; the steps from here compute in "
                      f"{self.cfg.precision}")
        if self.group.is_main:
            self._truncate_metrics()

    def _restore_noise(self, state: dict) -> None:
        """Each rank's dropout generators from a checkpoint of as many ranks; from another
        number of ranks, the shared draws continue exactly and the dropout noise is reseeded
        from the seed, the rank and the epoch."""
        saved = state.get("world_size", 1)
        if saved == self.group.world:
            if self.group.active:
                checkpoints.restore_default_rng_states(state["rng_ranks"][self.group.rank],
                                                       self.device)
            return
        if self.group.active:
            torch.manual_seed(self.cfg.seed + distributed.NOISE_SEED_STRIDE * self.group.rank
                              + self.epoch)
        self._say(f"ssgan: resuming a checkpoint of {saved} process(es) on "
                  f"{self.group.world}: batches, z, labeled picks and shifts continue exactly;"
                  " dropout masks are drawn anew")

    def _truncate_metrics(self) -> None:
        """Drops metrics rows written after the checkpoint (a run killed mid-record)."""
        with open(self.run_dir / "metrics.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=METRIC_FIELDS)
            writer.writeheader()
            writer.writerows(self.history)


def train(cfg: TrainConfig, data: Dataset | None = None) -> list[dict]:
    """Builds a :class:`Trainer` and trains; returns the per-epoch metrics."""
    return Trainer(cfg, data).fit()
