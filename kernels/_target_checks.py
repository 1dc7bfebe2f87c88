"""Where a labeled target outside [0, C) is reported: at once, or later from a device flag.

A direct ``masked_cross_entropy`` call raises ``ValueError`` at once, which costs one scalar
read from the device per call. A training loop cannot afford that read on a GPU (it stops the
host from queueing the next kernels), so inside :func:`deferred_target_checks` the ops only
OR a device-side flag, and the loop reads it where it waits for the device anyway.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

_active: list["DeferredTargetCheck"] = []


class DeferredTargetCheck:
    """A device flag that ``masked_cross_entropy`` calls set when a labeled target is out of
    range. :attr:`flag` is ``None`` until the first call, then a bool tensor of shape (1,)."""

    def __init__(self) -> None:
        self.flag: torch.Tensor | None = None

    def note(self, bad: torch.Tensor) -> None:
        """ORs ``bad`` (a bool tensor of one element, on the device) into the flag, in place
        (so a CUDA graph replays the update), without reading it."""
        if self.flag is None:
            self.flag = torch.zeros(1, dtype=torch.bool, device=bad.device)
        self.flag.logical_or_(bad.reshape(1))

    def flagged(self) -> torch.Tensor:
        """The flag as float (1,) on the device (0 when nothing was checked yet), for a loop to
        read together with its losses."""
        if self.flag is None:
            return torch.zeros(1)
        return self.flag.float()


@contextlib.contextmanager
def deferred_target_checks(check: DeferredTargetCheck | None = None
                           ) -> Iterator[DeferredTargetCheck]:
    """Within this block, out-of-range labeled targets set ``check.flag`` instead of raising.
    ``check`` continues a given check (a replayed CUDA graph ORs into the flag it captured);
    by default the block gets a new one."""
    check = check if check is not None else DeferredTargetCheck()
    _active.append(check)
    try:
        yield check
    finally:
        _active.remove(check)


def capturing(t: torch.Tensor) -> bool:
    """Whether ``t``'s device is recording a CUDA graph, where the host may read nothing."""
    return t.is_cuda and torch.cuda.is_current_stream_capturing()


def report(bad: torch.Tensor, read_row) -> None:
    """Called by the ops with ``bad`` (bool, one element, on the device). Deferred: notes it.
    Otherwise reads it (skipped during CUDA-graph capture, where no read is allowed) and calls
    ``read_row()`` for the first bad row, which raises the ValueError."""
    if _active:
        _active[-1].note(bad)
        return
    if capturing(bad):
        return
    if bool(bad.reshape(())):
        read_row()
