import csv
import math
import sys

import pytest
import torch

import ssgan.kernels as K
import ssgan.train as T
from ssgan import checkpoints
from ssgan.devices import decisions_of, policy, resolve_device
from conftest import DEVICE, KERNEL_PATH
from ssgan.data import Dataset, Split
from ssgan.models import BatchNorm

TIMING = {"step_ms", "epoch_s"}


def tiny_dataset(n=48, classes=3, channels=1, size=32, seed=0) -> Dataset:
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % classes
    # class-dependent brightness so there is something to learn
    images = (torch.rand(n, channels, size, size, generator=g) * 40 + labels.view(-1, 1, 1, 1)
              * 100).to(torch.uint8)
    test_labels = torch.arange(30) % classes
    test = (torch.rand(30, channels, size, size, generator=g) * 40
            + test_labels.view(-1, 1, 1, 1) * 100).to(torch.uint8)
    return Dataset(Split(images, labels), Split(test, test_labels), classes)


def tiny_config(tmp_path, **overrides) -> T.TrainConfig:
    cfg = dict(dataset="tiny", out_dir=str(tmp_path), name="run", labels=6,
               label_selection="balanced", batch_size=16, epochs=2, z_dim=8, d_size_mult=4,
               g_size_mult=4, kernels="torch", device="cpu", progress=False, seed=3,
               eval_batch_size=64)
    cfg.update(overrides)
    return T.config_for("notebook", **cfg)


def device_for(kernels: str) -> str:
    """The Triton path runs on the GPU where there is one (the interpreter serves CPU tensors
    only where no GPU is visible); the other paths are tested on the CPU."""
    return str(DEVICE) if kernels == "triton" else "cpu"


def read_metrics(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_two_epoch_smoke_run_writes_everything(tmp_path):
    cfg = tiny_config(tmp_path)
    history = T.train(cfg, tiny_dataset())
    run = tmp_path / "run"
    rows = read_metrics(run / "metrics.csv")
    assert [int(r["epoch"]) for r in rows] == [1, 2] and len(history) == 2
    assert set(rows[0]) == set(T.METRIC_FIELDS)
    assert float(rows[1]["lr"]) == pytest.approx(cfg.lr * cfg.lr_decay)
    for r in rows:
        assert 0 <= float(r["test_accuracy"]) <= 1 and float(r["step_ms"]) > 0
    for name in ("samples/epoch_001.png", "samples/epoch_002.png", "accuracy.png",
                 "config.json", "checkpoints/last.pt"):
        assert (run / name).stat().st_size > 0, name
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert state["epoch"] == 2 and state["opt_d"]["param_groups"][0]["lr"] == pytest.approx(
        cfg.lr * cfg.lr_decay)  # the lr epoch 2 trained with


IMPROVED_KNOBS = dict(augment_shift=2, ema_decay=0.9, lr_schedule="linear",
                     entropy_weight=0.1, unlabeled_weight=0.5, labeled_batch_size=8)


@pytest.mark.parametrize("kernels", ["torch", "inductor"])
def test_the_graph_ready_step_equals_the_ordinary_step_bit_for_bit(tmp_path, kernels):
    """The trainer's loop (batch indices, a tensor lr and the loss window in fixed buffers,
    every draw from the run's generators) against the ordinary step: ``Trainer.step`` on the
    permutation's slices with a float lr written into Adam's param groups. The linear schedule
    changes the lr at every step of the second half."""
    steps, knobs = 6, {**IMPROVED_KNOBS, "batch_size": 8, "epochs": 1, "refresh_every": 4,
                       "kernels": kernels}
    data = tiny_dataset()
    ready = T.Trainer(tiny_config(tmp_path / "ready", **knobs), data)
    ready.fit()
    cfg = tiny_config(tmp_path / "ordinary", **knobs)
    ordinary = T.Trainer(cfg, data)
    ordinary.opt_d, ordinary.opt_g = (
        torch.optim.Adam(m.parameters(), lr=cfg.lr, betas=(cfg.beta1, 0.999), fused=True)
        for m in (ordinary.d, ordinary.g))
    perm = torch.randperm(len(data.train), generator=ordinary.batch_rng)
    window, totals = torch.zeros(len(T.WINDOW_KEYS)), [0.0] * len(T.WINDOW_KEYS)
    with K.deferred_target_checks():  # the step runs cfg's --kernels itself
        for i in range(steps):
            for group in (*ordinary.opt_d.param_groups, *ordinary.opt_g.param_groups):
                group["lr"] = T.scheduled_lr(cfg, i, steps)
            losses = ordinary.step(perm[i * cfg.batch_size:(i + 1) * cfg.batch_size])
            window += torch.stack([losses[k].detach().float() for k in T.WINDOW_KEYS])
            if (i + 1) % cfg.refresh_every == 0 or i + 1 == steps:
                totals = [t + v for t, v in zip(totals, window.tolist())]
                window.zero_()
    for a, b in ((ready.g, ordinary.g), (ready.d, ordinary.d),
                 (ready.d_ema.module, ordinary.d_ema.module)):
        for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
            assert torch.equal(x, y), name
    for a, b in ((ready.opt_d, ordinary.opt_d), (ready.opt_g, ordinary.opt_g)):
        for x, y in zip(a.state.values(), b.state.values()):
            assert all(torch.equal(x[k], y[k]) for k in ("step", "exp_avg", "exp_avg_sq"))
    row = ready.history[0]
    assert [row["d_loss"], row["g_loss"], row["supervised_loss"]] == [t / steps for t in
                                                                      totals[:3]]
    assert row["lr"] == T.scheduled_lr(cfg, steps - 1, steps) < cfg.lr
    assert torch.equal(ready.batch_rng.get_state(), ordinary.batch_rng.get_state())


@pytest.mark.training
@pytest.mark.parametrize("knobs", [{}, IMPROVED_KNOBS], ids=["notebook", "improved-knobs"])
def test_resume_equals_an_uninterrupted_run(tmp_path, knobs):
    data = tiny_dataset()
    full = T.train(tiny_config(tmp_path / "a", epochs=3, **knobs), data)
    killed = T.Trainer(tiny_config(tmp_path / "b", epochs=3, **knobs), data)
    save = killed.save_checkpoint

    def save_then_die(*args):  # killed right after epoch 1's checkpoint
        save(*args)
        raise KeyboardInterrupt
    killed.save_checkpoint = save_then_die
    with pytest.raises(KeyboardInterrupt):
        killed.fit()
    resumed = T.train(tiny_config(tmp_path / "b", epochs=3, resume=True, **knobs), data)
    strip = lambda rows: [{k: v for k, v in r.items() if k not in TIMING} for r in rows]
    assert strip(resumed) == strip(full)
    a = torch.load(tmp_path / "a/run/checkpoints/last.pt", weights_only=True)
    b = torch.load(tmp_path / "b/run/checkpoints/last.pt", weights_only=True)
    for key in ("generator", "discriminator", "discriminator_ema"):
        for name, tensor in a[key].items():
            assert torch.equal(tensor, b[key][name]), name
    assert bool(a["discriminator_ema"]) == bool(knobs)
    assert len(read_metrics(tmp_path / "b/run/metrics.csv")) == 3


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    data = tiny_dataset()
    trainer = T.Trainer(tiny_config(tmp_path, epochs=3, refresh_every=2), data)
    real_step = trainer.step
    calls = {"n": 0}

    def step(idx):
        calls["n"] += 1
        losses = real_step(idx)
        if calls["n"] == 5:  # epoch 2 (3 steps per epoch), step 2
            losses["g_loss"] = torch.tensor(float("nan"))
        return losses

    monkeypatch.setattr(trainer, "step", step)
    with pytest.raises(T.TrainingError, match=r"non-finite loss at epoch 2, steps 1\.\.2.*"
                       "last good checkpoint.*--resume"):
        trainer.fit()
    state = torch.load(tmp_path / "run/checkpoints/last.pt", weights_only=True)
    assert state["epoch"] == 1


@pytest.mark.parametrize("kernels", ["triton", "inductor", "torch"])
def test_bad_label_is_refused_at_load_and_flagged_on_the_device_in_training(tmp_path, kernels):
    data = tiny_dataset()
    data.train.labels[5] = 7  # 3 classes
    with pytest.raises(ValueError, match="training labels span 0..7.*expected 0..2 or -1"):
        T.Trainer(tiny_config(tmp_path, kernels=kernels, device=device_for(kernels)), data)
    # a label corrupted after loading reaches the loss: the device flag stops the run
    trainer = T.Trainer(tiny_config(tmp_path, kernels=kernels, epochs=2,
                                    device=device_for(kernels)), tiny_dataset())
    trainer.train_labels[trainer.labeled_idx] = 3
    with pytest.raises(T.TrainingError, match=r"labeled target outside \[0, 3\) reached the "
                       r"loss at epoch 1, steps 1\.\.3"):
        trainer.fit()


def test_existing_run_needs_resume_and_resume_needs_checkpoint(tmp_path):
    data = tiny_dataset()
    T.train(tiny_config(tmp_path, epochs=1), data)
    with pytest.raises(ValueError, match="--resume"):
        T.train(tiny_config(tmp_path, epochs=1), data)
    with pytest.raises(ValueError, match="no checkpoint"):
        T.train(tiny_config(tmp_path, name="other", resume=True), data)


@pytest.mark.parametrize("overrides", [
    dict(labeled_batch_size=8, extra_class=True),
    dict(supervised_only=True),
    dict(eval_bn="batch", label_selection="first", labels=10),
    dict(eval_bn="recalibrated"),
])
def test_variants_run(tmp_path, overrides):
    """Each variant trains (finite losses, D's weights move) and takes its own branch."""
    trainer = T.Trainer(tiny_config(tmp_path, epochs=1, **overrides), tiny_dataset())
    d_before = {k: v.clone() for k, v in trainer.d.state_dict().items()}
    g_before = {k: v.clone() for k, v in trainer.g.state_dict().items()}
    history = trainer.fit()
    row = history[0]
    assert all(math.isfinite(row[k]) for k in ("d_loss", "g_loss", "supervised_loss"))
    assert 0 <= row["test_accuracy"] <= 1
    assert not torch.equal(trainer.d.conv1.weight, d_before["conv1.weight"])
    g_moved = any(not torch.equal(v, g_before[k]) for k, v in trainer.g.state_dict().items())
    assert g_moved != overrides.get("supervised_only", False)
    assert trainer.d.classifier.out_features == 3 + overrides.get("extra_class", False)
    bns = [m for m in trainer.d.modules() if isinstance(m, BatchNorm)]
    assert all(m.use_batch_stats == (overrides.get("eval_bn") == "batch") for m in bns)
    if overrides.get("label_selection") == "first":
        assert trainer.labeled_idx.tolist() == list(range(10))


@pytest.mark.training
def test_supervised_signal_learns_the_tiny_task(tmp_path):
    history = T.train(tiny_config(tmp_path, epochs=20, supervised_only=True, lr=3e-3,
                                  lr_decay=1.0), tiny_dataset())
    assert history[-1]["train_accuracy"] == 1.0 and history[-1]["test_accuracy"] >= 0.9


@pytest.mark.parametrize("overrides,match", [
    (dict(batch_size=0), "--batch-size"),
    (dict(batch_size=1000), "--batch-size"),
    (dict(labeled_batch_size=-1), "--labeled-batch-size"),
    (dict(epochs=0), "--epochs"),
    (dict(drop_rate=1.0), "--drop-rate"),
    (dict(labels=100), "--labels"),
    (dict(device="tpu"), "--device"),
    (dict(lr_schedule="cosine"), "--lr-schedule"),
    (dict(augment_shift=-1), "--augment-shift"),
    (dict(augment_shift=16), "--augment-shift"),
    (dict(ema_decay=1.0), "--ema-decay"),
    (dict(entropy_weight=-1.0), "--entropy-weight"),
    (dict(refresh_every=0), "--refresh-every"),
    (dict(eval_every=0), "--eval-every"),
])
def test_bad_config_names_the_flag(tmp_path, overrides, match):
    with pytest.raises(ValueError, match=match):
        T.Trainer(tiny_config(tmp_path, **overrides), tiny_dataset())


def test_recalibrated_evaluation_keeps_the_training_running_statistics(tmp_path):
    """--eval-bn recalibrated only borrows re-estimated statistics for evaluating: the
    checkpoint holds the running statistics training gathered, as a run evaluated with
    --eval-bn running does (training itself never reads them)."""
    data = tiny_dataset()
    T.train(tiny_config(tmp_path / "recal", eval_bn="recalibrated", epochs=1), data)
    T.train(tiny_config(tmp_path / "running", eval_bn="running", epochs=1), data)
    states = [torch.load(tmp_path / name / "run" / "checkpoints" / "last.pt",
                         weights_only=True)["discriminator"] for name in ("recal", "running")]
    buffers = [k for k in states[0] if "running_" in k or "num_batches" in k]
    assert buffers
    for k in buffers:
        assert torch.equal(states[0][k], states[1][k]), k


def test_a_step_called_directly_runs_the_configured_backend(tmp_path, monkeypatch):
    """Trainer.step applies --kernels itself, as fit() does: a caller that runs steps directly
    (a benchmark, a test, a user's own loop) gets the configured path, not the default."""
    monkeypatch.setenv("SSGAN_KERNELS", "triton")  # the default the step must override
    trainer = T.Trainer(tiny_config(tmp_path, kernels="torch"), tiny_dataset())
    seen = []
    classify = trainer.d.classify
    trainer.d.classify = lambda x, *args, **kwargs: seen.append(K.backend_for(x)) or classify(
        x, *args, **kwargs)
    trainer.step(torch.arange(16))
    assert seen == ["torch", "torch"]


@pytest.mark.parametrize("terms", ["all", "supervised"])
def test_labeled_batch_terms(tmp_path, terms):
    """With --labeled-batch-terms supervised the labeled batch gets its own D pass: the
    real-vs-fake term sees only the unlabeled batch, and both modes train."""
    cfg = tiny_config(tmp_path, labeled_batch_size=5, labeled_batch_terms=terms, epochs=1)
    trainer = T.Trainer(cfg, tiny_dataset())
    seen = []
    classify = trainer.d.classify
    trainer.d.classify = lambda x, *args, **kwargs: seen.append(x.shape[0]) or classify(
        x, *args, **kwargs)
    losses = trainer.step(torch.arange(16))
    assert seen == ([21, 16] if terms == "all" else [16, 16, 5])
    labeled = float(losses["labeled"])  # the rows the supervised term saw
    assert labeled == 5 if terms == "supervised" else labeled >= 5
    assert all(torch.isfinite(v) for v in losses.values())


def test_unknown_labeled_batch_terms_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="--labeled-batch-terms must be one of all, supervised"):
        T.Trainer(tiny_config(tmp_path, labeled_batch_terms="some"), tiny_dataset())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="on a CPU every device is the CPU, "
                    "so the test cannot tell where the state went: it runs on a GPU machine")
def test_resumed_optimizer_state_lives_where_pytorch_keeps_it(tmp_path):
    """After --resume, Adam's moments and step counters sit on their parameters' device, as in
    an uninterrupted run: the fused Adam (and a CUDA graph's replay of it) reads them there."""
    data = tiny_dataset()
    T.train(tiny_config(tmp_path, epochs=1, device=str(DEVICE)), data)
    trainer = T.Trainer(tiny_config(tmp_path, epochs=2, resume=True, device=str(DEVICE)), data)
    trainer.load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    for opt, model in ((trainer.opt_d, trainer.d), (trainer.opt_g, trainer.g)):
        for p in model.parameters():
            state = opt.state[p]
            assert state["step"].device == state["exp_avg"].device == p.device
            assert state["exp_avg_sq"].device == p.device


def test_adam_is_capturable_where_the_device_captures_its_step_also_after_resume(tmp_path):
    """PyTorch refuses to capture the step of an Adam whose groups are not ``capturable``, so
    the trainer's are capturable exactly where its device's policy captures (the GPU's,
    forced here on a CPU), also once a checkpoint from a device that does not has loaded."""
    data = tiny_dataset()
    T.train(tiny_config(tmp_path, epochs=1), data)  # the CPU's policy: no capture
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    assert state["opt_d"]["param_groups"][0]["capturable"] is False
    with decisions_of("cuda"):
        trainer = T.Trainer(tiny_config(tmp_path, epochs=2, resume=True), data)
        groups = lambda: [*trainer.opt_d.param_groups, *trainer.opt_g.param_groups]
        assert all(group["capturable"] for group in groups())
        trainer.load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
        assert all(group["capturable"] and group["lr"] is trainer.lr for group in groups())


def test_scheduled_lr():
    exp = T.TrainConfig(lr=1.0, lr_decay=0.5, lr_schedule="exponential", epochs=4)
    assert [T.scheduled_lr(exp, step, 10) for step in (0, 9, 10, 35)] == [1, 1, 0.5, 0.125]
    assert T.scheduled_lr(T.TrainConfig(lr=0.5, lr_schedule="constant"), 1000, 10) == 0.5
    lin = T.TrainConfig(lr=2.0, lr_schedule="linear", epochs=4)
    lrs = [T.scheduled_lr(lin, step, 10) for step in range(40)]
    assert lrs[0] == 2.0 and lrs[:21] == [2.0] * 21     # the first step, and the first half
    assert lrs[20] == 2.0 and lrs[21] < 2.0              # the midpoint: the last at full lr
    assert all(a > b for a, b in zip(lrs[20:], lrs[21:]))  # then straight down ...
    assert lrs[30] == pytest.approx(1.0)
    # ... to the docstring's last step, 2 * lr / T: the line would reach 0 one step later
    assert lrs[-1] == pytest.approx(2 * lin.lr / 40) and lrs[-1] > 0
    assert lrs[-1] - (lrs[-2] - lrs[-1]) == pytest.approx(0.0, abs=1e-12)


def test_evaluation_uses_the_weight_average_and_the_checkpoint_keeps_it(tmp_path):
    data = tiny_dataset()
    trainer = T.Trainer(tiny_config(tmp_path, epochs=2, ema_decay=0.5), data)
    trainer.fit()
    assert trainer.eval_model is trainer.d_ema.module
    d_state, ema_state = trainer.d.state_dict(), trainer.eval_model.state_dict()
    assert any(not torch.equal(d_state[k], ema_state[k]) for k in d_state)
    rows = read_metrics(tmp_path / "run" / "metrics.csv")
    assert [r["test_accuracy_no_ema"] != "" for r in rows] == [False, True]  # the last epoch
    assert 0 <= float(rows[-1]["test_accuracy_no_ema"]) <= 1
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    for name, tensor in checkpoints.ema_weights(state).items():
        assert torch.equal(tensor, ema_state[name]), name
    assert checkpoints.ema_weights({"discriminator_ema": {}}) == {}


def test_a_cuda_device_that_is_not_there_names_the_flag(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("cuda:0") == torch.device("cuda:0")
    with pytest.raises(ValueError, match=r"--device cuda:7: only 1 CUDA GPU\(s\) are visible "
                       r"\(cuda:0\.\.cuda:0\)"):
        resolve_device("cuda:7")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="no CUDA GPU is visible; use --device cpu"):
        resolve_device("cuda")


READS = ("item", "tolist", "__bool__", "__int__", "__float__", "__index__")


def _in_dynamo_guard(frame) -> bool:
    """Whether a read comes from a Dynamo guard. torch 2.11's guards on the ops' float arguments
    (slope, p) wrap the Python float in a tensor and call .item() on it: a host value, never a
    device read (seen on the lent H100; the pinned torch 2.14.1 makes no such read)."""
    return frame.f_code.co_filename == "<string>" and frame.f_code.co_name == "guard"


@pytest.mark.parametrize("kernels", ["triton", "inductor"])
def test_a_training_step_reads_nothing_back_from_the_device(tmp_path, monkeypatch, kernels):
    """Host reads stop a GPU's queue: a step must make none. Every Tensor method that reads a
    value is counted during one graph-ready step, which is what a CUDA graph captures (with
    every improved-recipe knob on), except on Adam's step counters, which PyTorch keeps on
    the CPU for its non-fused implementations."""
    trainer = T.Trainer(tiny_config(tmp_path, kernels=kernels, device=device_for(kernels),
                                    **IMPROVED_KNOBS), tiny_dataset())
    idx = torch.arange(trainer.cfg.batch_size, device=trainer.device)
    trainer.batch_idx.copy_(idx)
    with K.use_backend(kernels), K.deferred_target_checks():
        trainer.graph_ready_step()  # compiles, creates Adam's state
        counters = {id(s["step"]) for opt in (trainer.opt_d, trainer.opt_g)
                    for s in opt.state.values()}
        reads = []
        for name in READS:
            original = getattr(torch.Tensor, name)

            def counted(self, *args, _original=original, _name=name, **kwargs):
                if id(self) not in counters and not _in_dynamo_guard(sys._getframe(1)):
                    reads.append((_name, tuple(self.shape)))
                return _original(self, *args, **kwargs)
            monkeypatch.setattr(torch.Tensor, name, counted)
        trainer.graph_ready_step()  # what a CUDA graph captures
        monkeypatch.undo()
        assert K.backend_for(trainer.data.train.images) == (KERNEL_PATH if kernels == "triton"
                                                             else kernels)
    assert reads == []


@pytest.mark.training
def test_eval_every_measures_accuracy_every_n_epochs_and_after_the_last(tmp_path):
    history = T.train(tiny_config(tmp_path, epochs=5, eval_every=2), tiny_dataset())
    measured = [row["epoch"] for row in history if row["test_accuracy"] == row["test_accuracy"]]
    assert measured == [2, 4, 5]
    assert (tmp_path / "run" / "accuracy.png").stat().st_size > 0


@pytest.mark.parametrize("augment_shift", [0, 2])
def test_images_are_channels_first_while_feature_maps_follow_the_device(tmp_path,
                                                                        augment_shift):
    # wide enough that the generator's last feature maps are unambiguously channels-last
    trainer = T.Trainer(tiny_config(tmp_path, augment_shift=augment_shift, g_size_mult=16,
                                    d_size_mult=16), tiny_dataset(channels=3))
    fmt = policy(trainer.device).memory_format
    real = trainer._real_images(torch.arange(8))
    fake = trainer.g(trainer._sample_z(8))
    assert real.shape == fake.shape == (8, 3, 32, 32)
    assert real.is_contiguous() and fake.is_contiguous()
    assert trainer.d.conv2.weight.is_contiguous(memory_format=fmt)
    assert trainer.d.conv1(real).is_contiguous(memory_format=fmt)


def test_a_step_runs_inside_bf16_autocast_and_keeps_fp32_weights(tmp_path):
    """A user's ``torch.autocast`` around the step (the sub-pixel deconvolution's backward
    failed there on mixed dtypes): finite losses, weights and Adam's state stay fp32."""
    trainer = T.Trainer(tiny_config(tmp_path, **IMPROVED_KNOBS), tiny_dataset())
    with torch.autocast("cpu", torch.bfloat16):
        losses = trainer.step(torch.arange(16))
    assert all(torch.isfinite(v).all() for v in losses.values())
    for model, opt in ((trainer.d, trainer.opt_d), (trainer.g, trainer.opt_g)):
        for p in model.parameters():
            assert p.dtype == p.grad.dtype == opt.state[p]["exp_avg"].dtype == torch.float32
