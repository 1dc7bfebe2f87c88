"""Data-parallel training across the processes that ``torchrun`` starts (torch.distributed).

torchrun sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; without them a run is one process,
:func:`current` is a one-rank :class:`Group` and nothing here communicates. Across N ranks,
N ranks with B/N images each compute what one process computes with B:

- the global batch: one generator, seeded alike on every rank, draws the whole batch (the
  permutation, z, the labeled picks, the augmentation shifts); each rank keeps its shard of
  rows (:meth:`Group.shard`);
- cross-rank statistics (BatchNorm's count, sum and sum of squares; feature matching's batch
  means; the supervised term's labeled count) are summed by :func:`sum_across`, whose
  backward sums every rank's gradient too;
- both players' gradients are averaged by one all-reduce per step (:meth:`Group.average_`).
  Summed statistics plus averaged gradients give the gradient of the mean of the ranks'
  losses, which is the one-process loss when each rank's loss is a mean over its shard;
- dropout masks are drawn per rank, from the seed and the rank;
- the host's reads (loss window, evaluation counts) are summed across ranks, so every rank
  sees the same values and stops together.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

TIMEOUT = datetime.timedelta(minutes=10)  # a collective that waits longer names the lost rank
NOISE_SEED_STRIDE = 1_000_003  # rank r's dropout generator starts at seed + r * stride


@dataclass(frozen=True)
class Group:
    """This process's place among the run's ranks (one rank when not under torchrun)."""
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 writes metrics, plots and checkpoints, and prints."""
        return self.rank == 0

    def shard(self, t: torch.Tensor, dim: int = 0) -> torch.Tensor:
        """This rank's rows of ``t`` along ``dim``: contiguous, the ranks' counts differing by
        at most one (``t`` itself on one rank)."""
        if not self.active:
            return t
        n = t.shape[dim]
        start, stop = n * self.rank // self.world, n * (self.rank + 1) // self.world
        return t.narrow(dim, start, stop - start)

    def batch_mean(self, t: torch.Tensor) -> torch.Tensor:
        """The mean over dim 0 of the global batch whose shard is ``t`` (equal shards),
        differentiable; ``t.mean(0)`` on one rank."""
        if not self.active:
            return t.mean(0)
        return sum_across(t.sum(0)) / (t.shape[0] * self.world)

    def labeled_share(self, mask: torch.Tensor) -> torch.Tensor | None:
        """The factor that turns a mean over this shard's labeled rows (``mask``, bool) into
        this rank's share of the mean over the global batch's labeled rows: the ranks'
        averaged means are then that mean, however the labeled rows fall (None on one rank:
        nothing to rescale)."""
        if not self.active:
            return None
        local = mask.sum().float()
        return local * self.world / self.sum_(local.clone()).clamp_min(1.0)

    def sum_(self, t: torch.Tensor) -> torch.Tensor:
        """Sums ``t`` over the ranks in place (no gradient) and returns it."""
        if self.active:
            dist.all_reduce(t)
        return t

    def average_(self, grads: list[torch.Tensor]) -> None:
        """Averages ``grads`` over the ranks in place, flattened into one all-reduce."""
        if not self.active or not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= self.world
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view(g.shape))
            offset += g.numel()


class _SumAcrossRanks(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        y = x.clone()
        dist.all_reduce(y)
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


def sum_across(t: torch.Tensor) -> torch.Tensor:
    """``t`` summed over the ranks; the backward sums the ranks' gradients alike."""
    return _SumAcrossRanks.apply(t) if _group.active else t


_group = Group()


def current() -> Group:
    """The run's group (one rank until :func:`init_from_env` joins torchrun's)."""
    return _group


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def restart_count() -> int:
    """How many times torchrun restarted this group after a failure (``--max-restarts``)."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))


def restarted_by_torchrun() -> bool:
    return restart_count() > 0


def init_from_env(device: torch.device) -> tuple[Group, torch.device]:
    """Joins torchrun's process group (gloo on CPUs, NCCL on GPUs, one GPU per rank: a CUDA
    ``device`` without an index becomes ``cuda:LOCAL_RANK``) and returns this rank's
    :class:`Group` and device; one rank and ``device`` itself without torchrun."""
    global _group
    if not launched_by_torchrun():
        return _group, device
    group = Group(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]),
                  int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        if device.index is None:
            device = torch.device("cuda", group.local_rank)
        if device.index >= torch.cuda.device_count():
            raise ValueError(f"rank {group.rank} needs GPU {device.index} (LOCAL_RANK), but "
                             f"{torch.cuda.device_count()} are visible; give torchrun "
                             "--nproc-per-node at most the number of GPUs")
        torch.cuda.set_device(device)
    if group.active and not dist.is_initialized():
        # torchrun's store outlives a restart of the group; keys of one attempt apart keep a
        # restarted rank from reading a dead rank's address
        store, _, _ = next(dist.rendezvous("env://", timeout=TIMEOUT))
        store = dist.PrefixStore(f"ssgan/attempt-{restart_count()}", store)
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, store=store, rank=group.rank, world_size=group.world,
                                timeout=TIMEOUT,
                                **({"device_id": device} if device.type == "cuda" else {}))
    _group = group
    return group, device


def validate_batches(group: Group, batch_size: int, labeled_batch_size: int) -> None:
    """The global batches must split evenly over the ranks; a ValueError names the flags."""
    for flag, size in (("--batch-size", batch_size), ("--labeled-batch-size",
                                                       labeled_batch_size)):
        if size % group.world:
            raise ValueError(f"{flag} {size} is the global batch, split over {group.world} "
                             f"processes: it must be a multiple of {group.world} (change "
                             f"{flag} or torchrun's --nproc-per-node)")


def seed_noise(group: Group, seed: int) -> None:
    """Seeds the default generator (dropout masks) per rank, from ``seed`` and the rank; on
    one rank it is left as it is."""
    if group.active:
        torch.manual_seed(seed + NOISE_SEED_STRIDE * group.rank)


def leave() -> None:
    """Leaves the process group, if one was joined (at the end of a run)."""
    global _group
    if dist.is_initialized():
        dist.destroy_process_group()
    _group = Group()


def broadcast_object(obj: object) -> object:
    """Rank 0's ``obj`` on every rank (``obj`` itself on one rank)."""
    if not _group.active:
        return obj
    box = [obj if _group.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(obj: object) -> list:
    """Every rank's ``obj``, in rank order, on every rank."""
    if not _group.active:
        return [obj]
    out = [None] * _group.world
    dist.all_gather_object(out, obj)
    return out


def synced_batch_norm(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
                      running_mean: torch.Tensor, running_var: torch.Tensor, momentum: float,
                      eps: float, track: bool) -> torch.Tensor:
    """Batch norm of the global batch whose shard is ``x`` (N, C, ...): the ranks' counts, sums
    and sums of squares per channel are summed in one differentiable all-reduce, in float32.
    With ``track`` the running statistics move by ``momentum`` towards the global mean and
    unbiased variance, as ATen's batch norm does. Returns ``x``'s shape and dtype."""
    c, dims = x.shape[1], [0, *range(2, x.dim())]
    xf = x.float()
    count = torch.full((1,), x.numel() // max(1, c), dtype=torch.float32, device=x.device)
    totals = sum_across(torch.cat([count, xf.sum(dims), (xf * xf).sum(dims)]))
    n = totals[0]
    mean = totals[1:c + 1] / n
    var = (totals[c + 1:] / n - mean * mean).clamp_min(0)
    shape = (1, c) + (1,) * (x.dim() - 2)
    y = (xf - mean.view(shape)) * torch.rsqrt(var + eps).view(shape)
    if weight is not None:
        y = y * weight.view(shape) + bias.view(shape)
    if track:
        with torch.no_grad():
            running_mean.lerp_(mean.to(running_mean.dtype), momentum)
            running_var.lerp_((var * n / (n - 1).clamp_min(1)).to(running_var.dtype), momentum)
    return y.to(x.dtype)
