"""Argument checks shared by the Triton ops and their reference twins, so both reject the same
inputs with the same message."""
from __future__ import annotations

import torch

from . import _target_checks
from ._private_api import assert_async

FLOAT_DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)
MAX_SEED = 2**63 - 1
MAX_NUMEL = 2**31 - 1  # kernels index in int32 and draw dropout numbers from int32 offsets


def check_float_tensor(name: str, t: object, *, ndim: int | None = None) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in FLOAT_DTYPES:
        raise ValueError(f"{name} must be float64/32/16 or bfloat16, got {t.dtype}")
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {tuple(t.shape)}")
    if t.numel() > MAX_NUMEL:
        raise ValueError(f"{name} has {t.numel()} elements; at most {MAX_NUMEL} are supported, "
                         "split the tensor")
    return t


def int32_addressable(t: torch.Tensor) -> bool:
    """Whether every element's offset (sum of index * stride) fits the kernels' int32
    arithmetic: a view's memory span can exceed int32 although its element count does not."""
    span = sum((size - 1) * abs(stride) for size, stride in zip(t.shape, t.stride()))
    return t.numel() == 0 or span < MAX_NUMEL


def check_same_device(ref_name: str, ref: torch.Tensor, **others: torch.Tensor | None) -> None:
    for name, t in others.items():
        if t is not None and t.device != ref.device:
            raise ValueError(f"{name} is on {t.device} but {ref_name} is on {ref.device}; "
                             "move both to the same device")


def check_channel_vector(name: str, v: torch.Tensor | None, x: torch.Tensor) -> None:
    if v is None:
        return
    check_float_tensor(name, v, ndim=1)
    if x.dim() < 2 or v.shape[0] != x.shape[1]:
        raise ValueError(f"{name} must have one entry per channel (dim 1 of x, shape "
                         f"{tuple(x.shape)}), got shape {tuple(v.shape)}")


def check_dropout_p(p: float) -> None:
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout p must be in [0, 1), got {p}")


def resolve_seed(seed: int | torch.Tensor | None, device: torch.device) -> torch.Tensor:
    """The dropout seed as a 1-element int64 tensor on ``device``.

    ``None`` draws from torch's generator for ``device`` (so ``torch.manual_seed`` reproduces
    runs, and a CUDA-graph replay draws a fresh seed instead of freezing a Python int).
    """
    if seed is None:
        return torch.randint(0, MAX_SEED, (1,), device=device, dtype=torch.int64)
    if isinstance(seed, torch.Tensor):
        if seed.numel() != 1 or seed.dtype != torch.int64:
            raise ValueError(f"a tensor seed must hold one int64, got {seed.dtype} "
                             f"shape {tuple(seed.shape)}")
        return seed.reshape(1).to(device)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise ValueError(f"seed must be an int in [0, 2**63), got {seed!r}")
    return torch.tensor([seed], dtype=torch.int64, device=device)


def dropout_seeds(count: int, device: torch.device | str) -> list[torch.Tensor]:
    """``count`` dropout seeds drawn in one launch from torch's generator for ``device``, as
    one-element views (what ``resolve_seed(None, ...)`` draws one at a time)."""
    return list(torch.randint(0, MAX_SEED, (count,), device=device,
                              dtype=torch.int64).split(1))


_UNUSED_SEEDS: dict[torch.device, torch.Tensor] = {}


def unused_seed(device: torch.device) -> torch.Tensor:
    """The seed argument of a call without dropout, which no kernel reads: one shared
    read-only tensor per device rather than a fresh allocation per call."""
    seed = _UNUSED_SEEDS.get(device)
    if seed is None:
        seed = _UNUSED_SEEDS[device] = torch.zeros(1, dtype=torch.int64, device=device)
    return seed


def check_logits(name: str, logits: object, *, min_cols: int = 1) -> torch.Tensor:
    check_float_tensor(name, logits, ndim=2)
    if logits.shape[1] < min_cols:
        raise ValueError(f"{name} needs at least {min_cols} columns, got shape "
                         f"{tuple(logits.shape)}")
    return logits


def check_targets(logits: torch.Tensor, target: object, mask: object) -> torch.Tensor:
    """Checks shapes and dtypes of ``target`` and ``mask``; returns the mask as float weights."""
    batch = logits.shape[0]
    if not isinstance(target, torch.Tensor) or target.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"target must be an int64 tensor of shape ({batch},), got "
                         f"{getattr(target, 'dtype', type(target).__name__)}")
    if not isinstance(mask, torch.Tensor) or not (mask.dtype == torch.bool
                                                   or mask.dtype.is_floating_point):
        raise ValueError(f"mask must be a bool or float tensor of shape ({batch},), got "
                         f"{getattr(mask, 'dtype', type(mask).__name__)}")
    for name, t in (("target", target), ("mask", mask)):
        if tuple(t.shape) != (batch,):
            raise ValueError(f"{name} must have shape ({batch},) to match logits "
                             f"{tuple(logits.shape)}, got {tuple(t.shape)}")
    check_same_device("logits", logits, target=target, mask=mask)
    return mask.to(torch.float64 if logits.dtype == torch.float64 else torch.float32)


def check_target_range(target: torch.Tensor, weight: torch.Tensor, num_classes: int) -> None:
    """Labeled rows (weight != 0) must hold a class in [0, num_classes).

    Eagerly this syncs with the device and raises ValueError naming the first bad row (or, in
    ``deferred_target_checks``, sets the device flag, also while a CUDA graph is being
    captured, so that every replay sets it). Inside torch.compile (the twins are traced there)
    it becomes an asynchronous device assert."""
    bad = (weight != 0) & ((target < 0) | (target >= num_classes))
    if torch.compiler.is_compiling():
        assert_async(~bad.any(), f"a target on a labeled row is outside [0, {num_classes})")
        return
    _target_checks.report(bad.any(), lambda: raise_bad_target(
        target, int(bad.nonzero()[0, 0]), num_classes))


def raise_bad_target(target: torch.Tensor, row: int, num_classes: int) -> None:
    raise ValueError(f"target[{row}] = {int(target[row])} is outside [0, {num_classes}) on a "
                     "labeled row (mask != 0); mask such rows out or fix the labels")


MAX_SEGMENTS = 4  # the kernels select a row's segment with at most three comparisons


def segment_bounds(segments: object, rows: int) -> tuple[int, ...]:
    """The end row of each segment, for ``segments`` (sizes that sum to ``rows``; None means
    one segment of every row). Each size is a positive int, at most MAX_SEGMENTS of them."""
    if segments is None:
        segments = (rows,)
    if (not isinstance(segments, (tuple, list)) or not segments
            or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in segments)):
        raise ValueError(f"segments must be a tuple of positive ints (rows per segment), got "
                         f"{segments!r}")
    if len(segments) > MAX_SEGMENTS:
        raise ValueError(f"at most {MAX_SEGMENTS} segments are supported, got {len(segments)}")
    if sum(segments) != rows:
        raise ValueError(f"segments {tuple(segments)} sum to {sum(segments)}, but x has {rows} "
                         "rows (dim 0); they must cover every row once")
    bounds, end = [], 0
    for s in segments:
        end += s
        bounds.append(end)
    return tuple(bounds)
