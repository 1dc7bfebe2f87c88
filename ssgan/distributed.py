"""Data-parallel training across the processes that ``torchrun`` starts (torch.distributed).

torchrun sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``. One :class:`Group` owns the run's
rank, world and collectives: :func:`join` sets it up (one process without torchrun) and every
module reads it from :func:`current`. Across N ranks, N ranks with B/N images each compute
what one process computes with B:

- the global batch: one generator, seeded alike on every rank, draws the whole batch (the
  permutation, z, the labeled picks, the augmentation shifts); each rank keeps its shard of
  rows (:meth:`Group.shard`);
- cross-rank statistics (BatchNorm's per-rank counts, means and centred sums of squares;
  feature matching's batch means; the supervised term's labeled count) go through
  :meth:`Group.sum_across`, whose backward sums every rank's gradient too;
- both players' gradients are averaged by one all-reduce per step (:meth:`Group.average_`).
  Summed statistics plus averaged gradients give the gradient of the mean of the ranks'
  losses, which is the one-process loss when each rank's loss is a mean over its shard;
- dropout masks are drawn per rank, from the seed and the rank;
- the host's reads (loss window, evaluation counts) are summed across ranks, so every rank
  sees the same values and stops together;
- rank 0 alone reads the run folder (the ranks of several nodes need not share a disk) and
  broadcasts what it decided (:meth:`Group.broadcast_object`).
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F

TIMEOUT = datetime.timedelta(minutes=10)  # a collective that waits longer names the lost rank
NOISE_SEED_STRIDE = 1_000_003  # rank r's dropout generator starts at seed + r * stride


@dataclass(frozen=True)
class Group:
    """This process's place among the run's ranks, and the collectives across them: the one
    object that decides rank, world and communication. Everything reads it from
    :func:`current`; a one-rank group communicates nothing, a group of several ranks always
    communicates (and fails loudly when no process group was joined)."""
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 reads the run folder, writes metrics, plots and checkpoints, and prints."""
        return self.rank == 0

    def _joined(self) -> None:
        if not dist.is_initialized():
            raise RuntimeError(f"ssgan.distributed: a group of {self.world} ranks needs the "
                               "process group that distributed.join() starts under torchrun")

    def shard(self, t: torch.Tensor, dim: int = 0) -> torch.Tensor:
        """This rank's rows of ``t`` along ``dim``: contiguous, the ranks' counts differing by
        at most one (``t`` itself on one rank)."""
        if not self.active:
            return t
        n = t.shape[dim]
        start, stop = n * self.rank // self.world, n * (self.rank + 1) // self.world
        return t.narrow(dim, start, stop - start)

    def sum_across(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` summed over the ranks, differentiable: the backward sums the ranks'
        gradients alike (``t`` itself on one rank)."""
        if not self.active:
            return t
        self._joined()
        return _SumAcrossRanks.apply(t)

    def gather(self, t: torch.Tensor) -> torch.Tensor:
        """Every rank's ``t`` stacked in rank order, (world, *t.shape), differentiable: one
        all-reduce of a tensor that holds ``t`` in this rank's row and zeros elsewhere."""
        rows = (self.rank, self.world - 1 - self.rank)
        return self.sum_across(F.pad(t.reshape(1, -1), (0, 0, *rows)).view(self.world,
                                                                            *t.shape))

    def batch_mean(self, t: torch.Tensor) -> torch.Tensor:
        """The mean over dim 0 of the global batch whose shard is ``t`` (equal shards),
        differentiable; ``t.mean(0)`` on one rank."""
        if not self.active:
            return t.mean(0)
        return self.sum_across(t.sum(0)) / (t.shape[0] * self.world)

    def labeled_share(self, mask: torch.Tensor) -> torch.Tensor | None:
        """The factor that turns a mean over this shard's labeled rows (``mask``, bool or 0/1
        float) into this rank's share of the mean over the global batch's labeled rows: the
        ranks' averaged means are then that mean, however the labeled rows fall (None on one
        rank: nothing to rescale)."""
        if not self.active:
            return None
        local = mask.sum().float()
        return local * self.world / self.sum_(local.clone()).clamp_min(1.0)

    def sum_(self, t: torch.Tensor) -> torch.Tensor:
        """Sums ``t`` over the ranks in place (no gradient) and returns it."""
        if self.active:
            self._joined()
            dist.all_reduce(t)
        return t

    def average_(self, grads: list[torch.Tensor]) -> None:
        """Averages ``grads`` over the ranks in place, flattened into one all-reduce in
        float32 (or wider: float64 stays float64)."""
        if not self.active or not grads:
            return
        self._joined()
        dtype = torch.promote_types(grads[0].dtype, torch.float32)
        flat = torch.cat([g.reshape(-1).to(dtype) for g in grads])
        dist.all_reduce(flat)
        flat /= self.world
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view(g.shape))
            offset += g.numel()

    def broadcast_object(self, obj: object) -> object:
        """Rank 0's ``obj`` on every rank (``obj`` itself on one rank): how rank 0's decisions
        and what it read from the run folder reach the others."""
        if not self.active:
            return obj
        self._joined()
        box = [obj if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather_objects(self, obj: object) -> list:
        """Every rank's ``obj``, in rank order, on every rank."""
        if not self.active:
            return [obj]
        self._joined()
        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out


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


ONE_PROCESS = Group()
_joined_group: Group | None = None  # set by join(), cleared by leave()


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def current() -> Group:
    """The run's group: what :func:`join` set up, else one process. Under torchrun, asking
    before :func:`join` is an error, so no caller can silently act as one process in a run
    of several."""
    if _joined_group is not None:
        return _joined_group
    if launched_by_torchrun() and int(os.environ["WORLD_SIZE"]) > 1:
        raise RuntimeError("ssgan.distributed: torchrun started this process as rank "
                           f"{os.environ['RANK']} of {os.environ['WORLD_SIZE']}, but "
                           "distributed.join() has not run yet")
    return ONE_PROCESS


def restart_count() -> int:
    """How many times torchrun restarted this group after a failure (``--max-restarts``)."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))


def restarted_by_torchrun() -> bool:
    return restart_count() > 0


def join(device: torch.device) -> torch.device:
    """Joins torchrun's process group (gloo on CPUs, NCCL on GPUs, one GPU per rank: a CUDA
    ``device`` without an index becomes ``cuda:LOCAL_RANK``), makes it :func:`current`, and
    returns this rank's device; without torchrun, one process and ``device`` itself."""
    global _joined_group
    if not launched_by_torchrun():
        _joined_group = ONE_PROCESS
        return device
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
    _joined_group = group
    return device


def leave() -> None:
    """Leaves the process group, if one was joined (at the end of a run)."""
    global _joined_group
    if dist.is_initialized():
        dist.destroy_process_group()
    _joined_group = None


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


def combine_statistics(counts: torch.Tensor, means: torch.Tensor, centred: torch.Tensor
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Chan et al.'s parallel combination of per-part statistics: ``counts`` (P,), ``means``
    and ``centred`` sums of squares (P, C) -> the whole's count, mean (C,) and biased variance
    (C,). Each part's squares are centred on its own mean, so nothing cancels when
    |mean| >> std, as E[x^2] - E[x]^2 would."""
    n = counts.sum()
    weights = (counts / n)[:, None]
    mean = (weights * means).sum(0)
    var = (centred.sum(0) + (counts[:, None] * (means - mean) ** 2).sum(0)) / n
    return n, mean, var


def synced_batch_norm(group: Group, x: torch.Tensor, weight: torch.Tensor | None,
                      bias: torch.Tensor | None, running_mean: torch.Tensor,
                      running_var: torch.Tensor, momentum: float, eps: float,
                      track: bool, segments: tuple[int, ...] | None = None) -> torch.Tensor:
    """Batch norm of the global batch whose shard is ``x`` (N, C, ...), each of ``segments``
    (row counts, default one segment) with its own statistics: every rank's count, per-channel
    mean and centred sum of squares of every segment (float32, or float64 for float64) are
    gathered in one differentiable all-reduce and combined by :func:`combine_statistics`.
    With ``track`` the running statistics move by ``momentum`` towards the first segment's
    global mean and unbiased variance, as ATen's batch norm does. Returns ``x``'s shape and
    dtype."""
    c, dims = x.shape[1], [0, *range(2, x.dim())]
    segments = segments or (x.shape[0],)
    xf = x.to(torch.promote_types(x.dtype, torch.float32))
    shape = (1, c) + (1,) * (x.dim() - 2)
    parts, starts = [], [sum(segments[:i]) for i in range(len(segments))]
    for start, size in zip(starts, segments):
        xs = xf[start:start + size]
        count = torch.full((1,), xs.numel() // max(1, c), dtype=xf.dtype, device=x.device)
        local_mean = xs.mean(dims) if xs.numel() else xf.new_zeros(c)
        local_centred = ((xs - local_mean.view(shape)) ** 2).sum(dims)
        parts.append(torch.cat([count, local_mean, local_centred]))
    gathered = group.gather(torch.cat(parts)).view(group.world, len(segments), 2 * c + 1)
    outputs = []
    for i, (start, size) in enumerate(zip(starts, segments)):
        n, mean, var = combine_statistics(gathered[:, i, 0], gathered[:, i, 1:c + 1],
                                          gathered[:, i, c + 1:])
        y = (xf[start:start + size] - mean.view(shape)) * torch.rsqrt(var + eps).view(shape)
        if weight is not None:
            y = y * weight.view(shape) + bias.view(shape)
        if track and i == 0:
            with torch.no_grad():
                running_mean.lerp_(mean.to(running_mean.dtype), momentum)
                running_var.lerp_((var * n / (n - 1).clamp_min(1)).to(running_var.dtype),
                                  momentum)
        outputs.append(y)
    return (outputs[0] if len(outputs) == 1 else torch.cat(outputs)).to(x.dtype)
