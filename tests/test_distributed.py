"""Data-parallel training across processes (ssgan.distributed), on the CPU with gloo: two ranks
with the global batch B against one process with B, and real torchrun runs of ``ssgan train``
(outputs, resume, a killed worker)."""
import dataclasses
import datetime
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

import ssgan.train as T
from ssgan import devices, distributed
from ssgan.distributed import Group
from helpers import needs_native_bf16_cpu
from test_train import IMPROVED_KNOBS, TIMING, read_metrics, tiny_config, tiny_dataset

pytestmark = pytest.mark.subprocess

# Dropout off (its masks are drawn per rank); augmentation stays on: its shifts are drawn for
# the global batch, so two ranks shift as one process does.
KNOBS = {**IMPROVED_KNOBS, "drop_rate": 0.0, "epochs": 2, "batch_size": 16}
STEPS = 2 * 48 // 16
# A bias that feeds a training-mode BatchNorm has a gradient of zero in exact arithmetic: BN
# subtracts it again. Adam scales the rounding noise left in its place to steps of up to lr,
# so these biases (and the running means they shift) differ between any two summation orders,
# one process included; they change nothing downstream, which the forward check below shows.
NOISE_DRIVEN = ("dense.bias", "deconv1.bias", "deconv2.bias", "act0.bn.running_mean",
                "act1.bn.running_mean", "act2.bn.running_mean", "conv3.bias", "conv4.bias",
                "conv5.bias", "act3.bn.running_mean", "act4.bn.running_mean",
                "act5.bn.running_mean")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank: int, world: int, port: int, out: str, broken: str, overrides: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    if broken == "gradients":
        Group.average_ = lambda self, grads: None
    elif broken == "batch_norm":  # every rank normalises with its own shard's statistics
        import ssgan.models
        ssgan.models.distributed = type("Local", (), {"current": staticmethod(Group)})
    trainer = T.Trainer(tiny_config(Path(out), **{**KNOBS, **overrides}), tiny_dataset())
    trainer.fit()
    (Path(out) / f"captured-{rank}").write_text(str(trainer.graph_step.captured))
    distributed.leave()


def one_process_run(out: Path, **overrides) -> dict:
    T.Trainer(tiny_config(out, **{**KNOBS, **overrides}), tiny_dataset()).fit()
    return torch.load(out / "run" / "checkpoints" / "last.pt", weights_only=True)


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    return one_process_run(tmp_path_factory.mktemp("one"))


def two_ranks(out: Path, broken: str = "", **overrides) -> dict:
    mp.spawn(_rank, args=(2, free_port(), str(out), broken, overrides), nprocs=2)
    return torch.load(out / "run" / "checkpoints" / "last.pt", weights_only=True)


def forward(state: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """G's images and D's logits on fixed inputs with the run's weights, training-mode BN."""
    trainer = T.Trainer(tiny_config(Path("/nonexistent"), **KNOBS), tiny_dataset())
    trainer.g.load_state_dict(state["generator"])
    trainer.d.load_state_dict(state["discriminator"])
    z = torch.rand(16, trainer.cfg.z_dim, generator=torch.Generator().manual_seed(1))
    images = trainer.g(z)
    return images, trainer.d(images)[0]


def differences(a: dict, b: dict) -> list[str]:
    """Weights and BatchNorm buffers of both players where the runs differ beyond fp32
    rounding (the noise-driven ones: beyond Adam's step bound)."""
    bad = []
    for key in ("generator", "discriminator", "discriminator_ema"):
        for name, x in a[key].items():
            if not x.is_floating_point():
                continue
            if name in NOISE_DRIVEN:
                if (x - b[key][name]).abs().max() > 2 * STEPS * KNOBS.get("lr", 1e-3):
                    bad.append(f"{key}.{name}")
            elif not torch.allclose(x, b[key][name], rtol=1e-5, atol=1e-6):
                bad.append(f"{key}.{name}")
    return bad


def test_two_ranks_with_the_global_batch_equal_one_process(one_process, tmp_path):
    two = two_ranks(tmp_path)
    assert differences(one_process, two) == []
    for x, y in zip(forward(one_process), forward(two)):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-5)
    for a, b in zip(one_process["history"], two["history"]):
        for key in ("d_loss", "g_loss", "supervised_loss"):
            assert a[key] == pytest.approx(b[key], rel=1e-5), key
    assert two["world_size"] == 2 and len(two["rng_ranks"]) == 2


@needs_native_bf16_cpu
def test_two_ranks_equal_one_process_under_bf16(tmp_path):
    """--precision bf16 on 2 ranks against 1 process, to bf16 accuracy: the convolutions run
    in bf16 on each shard, the BatchNorm statistics and the averaged gradients in fp32."""
    one = one_process_run(tmp_path / "one", precision="bf16")
    two = two_ranks(tmp_path / "two", precision="bf16")
    assert one["config"]["precision"] == two["config"]["precision"] == "bf16"
    for a, b in zip(one["history"], two["history"]):
        for key in ("d_loss", "g_loss", "supervised_loss"):
            assert a[key] == pytest.approx(b[key], rel=2e-2, abs=1e-3), key
    for x, y in zip(forward(one), forward(two)):
        torch.testing.assert_close(x, y, rtol=5e-2, atol=5e-2)


def _one_pass_rank(*args) -> None:
    """A rank whose device (the CPU) runs D once over its segments, as a GPU does."""
    devices.POLICIES["cpu"] = dataclasses.replace(devices.POLICIES["cpu"],
                                                  one_pass_discriminator=True)
    _rank(*args)


def test_two_ranks_equal_one_process_with_one_d_pass(tmp_path, monkeypatch):
    """One D pass over [real; fake] per step: each segment's BatchNorm statistics are the
    global batch's, gathered in one all-reduce per layer."""
    monkeypatch.setitem(devices.POLICIES, "cpu", dataclasses.replace(
        devices.POLICIES["cpu"], one_pass_discriminator=True))
    one = one_process_run(tmp_path / "one")
    mp.spawn(_one_pass_rank, args=(2, free_port(), str(tmp_path / "two"), "", {}), nprocs=2)
    two = torch.load(tmp_path / "two" / "run" / "checkpoints" / "last.pt", weights_only=True)
    assert differences(one, two) == []
    for a, b in zip(one["history"], two["history"]):
        for key in ("d_loss", "g_loss", "supervised_loss"):
            assert a[key] == pytest.approx(b[key], rel=1e-5), key


@pytest.mark.parametrize("broken", ["gradients", "batch_norm"])
def test_without_its_synchronisation_two_ranks_differ(one_process, tmp_path, broken):
    """The equivalence above fails when either synchronisation is taken out."""
    assert len(differences(one_process, two_ranks(tmp_path, broken))) > 10


def _bn_rank(rank: int, world: int, port: int, out: str, seed: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    distributed.join(torch.device("cpu"))
    group = distributed.current()
    draws = torch.Generator().manual_seed(seed)  # alike on both ranks
    x = 1e4 + torch.randn(8, 3, 5, 5, generator=draws)
    weight, bias = torch.rand(3, generator=draws) + 0.5, torch.randn(3, generator=draws)
    running = torch.zeros(3), torch.ones(3)
    y = distributed.synced_batch_norm(group, group.shard(x), weight, bias, *running,
                                      momentum=0.5, eps=1e-3, track=True)
    torch.save({"y": y, "running_mean": running[0], "running_var": running[1],
                "weight": weight, "bias": bias, "x": x}, Path(out) / f"bn-{rank}.pt")
    distributed.leave()


def test_synced_batch_norm_is_stable_when_the_mean_dwarfs_the_std(tmp_path):
    """Data of mean 1e4 and std 1 over two ranks against fp64 batch norm of the whole batch
    (E[x^2] - E[x]^2 in fp32 loses the variance entirely there)."""
    seed = int.from_bytes(os.urandom(4), "little")
    mp.spawn(_bn_rank, args=(2, free_port(), str(tmp_path), seed), nprocs=2)
    ranks = [torch.load(tmp_path / f"bn-{r}.pt") for r in (0, 1)]
    x = ranks[0]["x"].double()
    running_mean, running_var = torch.zeros(3, dtype=torch.float64), torch.ones(3,
                                                                               dtype=torch.float64)
    truth = torch.nn.functional.batch_norm(x, running_mean, running_var,
                                           ranks[0]["weight"].double(), ranks[0]["bias"].double(),
                                           training=True, momentum=0.5, eps=1e-3)
    y = torch.cat([r["y"] for r in ranks]).double()
    torch.testing.assert_close(y, truth, rtol=0, atol=2e-2, msg=f"seed {seed}")
    for r in ranks:
        torch.testing.assert_close(r["running_var"].double(), running_var, rtol=1e-2, atol=0)
        torch.testing.assert_close(r["running_mean"].double(), running_mean, rtol=1e-6, atol=0)


def _restarted_rank(rank: int, world: int, port: int, root: str) -> None:
    """A rank of a group that torchrun restarted, on a node of its own: its run folder is
    root/node<rank> (rank 1's does not exist). Records the epochs it trains."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank), TORCHELASTIC_RESTART_COUNT="1")
    torch.set_num_threads(1)
    distributed.TIMEOUT = datetime.timedelta(seconds=60)  # a hang fails in a minute
    trained = []
    train_epoch = T.Trainer._train_epoch

    def record(self, check):
        trained.append(self.epoch)
        train_epoch(self, check)
    T.Trainer._train_epoch = record
    trainer = T.Trainer(tiny_config(Path(root) / f"node{rank}", **KNOBS), tiny_dataset())
    trainer.fit()
    (Path(root) / f"trained-{rank}.json").write_text(json.dumps(trained))
    distributed.leave()


def test_a_restarted_group_without_a_shared_disk_resumes_on_every_rank(tmp_path):
    """Rank 0 alone sees the run folder: it decides to resume and every rank follows, from
    the same epoch."""
    T.Trainer(tiny_config(tmp_path / "node0", **{**KNOBS, "epochs": 1}), tiny_dataset()).fit()
    mp.spawn(_restarted_rank, args=(2, free_port(), str(tmp_path)), nprocs=2)
    assert [json.loads((tmp_path / f"trained-{r}.json").read_text()) for r in (0, 1)] == [
        [1], [1]]
    assert [r["epoch"] for r in read_metrics(tmp_path / "node0" / "run" / "metrics.csv")] == [
        "1", "2"]
    assert not (tmp_path / "node1").exists()  # rank 1 writes nothing


# ------------------------------------------------------------------ torchrun, the CLI
TINY = ["--epochs", "3", "--d-size-mult", "4", "--g-size-mult", "4", "--z-dim", "8",
        "--batch-size", "128", "--eval-every", "1", "--kernels", "torch", "--no-progress",
        "--labels", "20", "--eval-batch-size", "2000", "--eval-bn", "running"]


def epochs(args: list[str], n: int) -> list[str]:
    """``args`` with ``--epochs n``."""
    i = args.index("--epochs")
    return [*args[:i + 1], str(n), *args[i + 2:]]


def torchrun(*args: str, restarts: int = 0) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            "--nproc-per-node=2", f"--max-restarts={restarts}", "-m", "ssgan", "train",
            *args]


def run(cmd: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)


def comparable_rows(run_dir: Path) -> list[dict]:
    """Metrics rows without timings, and without the accuracy without the weight average,
    which only a run's last epoch measures (a run that ends at epoch 2 measures it there)."""
    return [{k: v for k, v in r.items() if k not in {*TIMING, "test_accuracy_no_ema"}}
            for r in read_metrics(run_dir / "metrics.csv")]


def test_a_torchrun_run_writes_one_set_of_outputs_and_resumes_exactly(tmp_path):
    full = run(torchrun(*epochs(TINY, 2), "--out-dir", str(tmp_path), "--name", "full"))
    assert full.returncode == 0, full.stderr[-2000:]
    out = full.stdout + full.stderr
    assert out.count("ssgan: done") == 1 and out.count("epoch 2/2") == 1
    assert "2 processes (gloo)" in out
    run_dir = tmp_path / "full"
    assert [r["epoch"] for r in read_metrics(run_dir / "metrics.csv")] == ["1", "2"]
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["last.pt"]
    assert sorted(p.name for p in (run_dir / "samples").iterdir()) == [
        "epoch_001.png", "epoch_002.png"]
    assert (run_dir / "accuracy.png").is_file() and (run_dir / "summary.json").is_file()

    part = [*epochs(TINY, 2), "--out-dir", str(tmp_path), "--name", "part"]
    first = run(torchrun(*epochs(part, 1)))
    assert first.returncode == 0, first.stderr[-2000:]
    resumed = run(torchrun(*part, "--resume"))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert comparable_rows(tmp_path / "part") == comparable_rows(run_dir)
    resumed_state, full_state = (torch.load(d / "checkpoints" / "last.pt", weights_only=True)
                                 for d in (tmp_path / "part", run_dir))
    for key in ("generator", "discriminator", "discriminator_ema"):
        for name, x in full_state[key].items():
            assert torch.equal(x, resumed_state[key][name]), name

    # a 2-process checkpoint resumes on one process, and says what changes
    one = run([sys.executable, "-m", "ssgan", "train", *epochs(part, 3), "--resume"])
    assert one.returncode == 0, one.stderr[-2000:]
    assert "resuming a checkpoint of 2 process(es) on 1" in one.stdout + one.stderr
    assert [r["epoch"] for r in read_metrics(tmp_path / "part" / "metrics.csv")] == [
        "1", "2", "3"]


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(c) for c in path.read_text().split()] if path.exists() else []


def kill_a_worker_after_the_first_checkpoint(cmd: list[str], run_dir: Path
                                             ) -> subprocess.CompletedProcess:
    """Runs ``cmd`` (torchrun), SIGKILLs one of its two workers once the run's first
    checkpoint exists, and returns how torchrun ended. The output goes to files: a pipe
    nobody reads while the run goes on could fill up and stall the workers."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out, err = run_dir.parent / f"{run_dir.name}.out", run_dir.parent / f"{run_dir.name}.err"
    with open(out, "w") as stdout, open(err, "w") as stderr:
        proc = subprocess.Popen(cmd, stdout=stdout, stderr=stderr, text=True, env=env)
        try:
            deadline = time.monotonic() + 300
            while not (run_dir / "checkpoints" / "last.pt").exists():
                assert time.monotonic() < deadline and proc.poll() is None, "no checkpoint"
                time.sleep(0.2)
            workers = _children(proc.pid)
            assert len(workers) == 2, workers
            os.kill(workers[-1], signal.SIGKILL)
            proc.wait(timeout=300)
        finally:
            proc.kill()
    return subprocess.CompletedProcess(cmd, proc.returncode, out.read_text(), err.read_text())


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="finds torchrun's workers "
                    "through /proc (Linux)")
def test_a_killed_worker_stops_the_run_and_a_restart_resumes_it(tmp_path):
    stopped = kill_a_worker_after_the_first_checkpoint(
        torchrun(*TINY, "--out-dir", str(tmp_path), "--name", "stopped"), tmp_path / "stopped")
    assert stopped.returncode != 0
    assert "ssgan: done" not in stopped.stdout
    assert "SIGKILL" in stopped.stderr or "Signal 9" in stopped.stderr, stopped.stderr[-2000:]
    assert (tmp_path / "stopped" / "checkpoints" / "last.pt").is_file()  # the last good one

    restarted = kill_a_worker_after_the_first_checkpoint(
        torchrun(*epochs(TINY, 2), "--out-dir", str(tmp_path), "--name", "restarted",
                 restarts=1), tmp_path / "restarted")
    assert restarted.returncode == 0, restarted.stderr[-3000:]
    assert restarted.stdout.count("ssgan: done") == 1
    assert [r["epoch"] for r in read_metrics(tmp_path / "restarted" / "metrics.csv")] == [
        "1", "2"]


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="two ranks on NCCL need two GPUs "
                    "(this machine has fewer)")
def test_two_gpus_capture_their_collectives_in_the_cuda_graph(tmp_path):
    """On GPUs the all-reduces are NCCL's, inside the captured step; the result is the one-GPU
    run's, to a tolerance (cuDNN's backward sums in no fixed order)."""
    gpu = {"device": "cuda", "kernels": "triton"}
    one = one_process_run(tmp_path / "one", **gpu)
    two = two_ranks(tmp_path / "two", **gpu)
    assert [(tmp_path / "two" / f"captured-{r}").read_text() for r in (0, 1)] == ["True"] * 2
    for x, y in zip(forward(one), forward(two)):
        torch.testing.assert_close(x.cpu(), y.cpu(), rtol=1e-3, atol=1e-3)
