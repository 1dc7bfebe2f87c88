"""Checkpoints: what a run saves after each epoch, and how it reads them back.

A checkpoint holds both players, their optimizers, the weight average, the metrics so far and
every random generator's state, so that ``--resume`` continues a run bit-exactly on a CPU.
It is written to a temporary file and renamed, so a kill mid-save keeps the previous one.
"""
from __future__ import annotations

import contextlib
import os
import pickle
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from ssgan.errors import describe

LAST = Path("checkpoints") / "last.pt"  # inside a run folder
FORMAT = 2  # 2: checkpoints keep the BatchNorm statistics of the last evaluation
REQUIRED = ("epoch", "config", "generator", "discriminator", "num_classes")


def save(state: dict[str, Any], path: Path) -> None:
    """Writes ``state`` to ``path`` atomically (a temporary file, then a rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({**state, "format": FORMAT}, tmp)
    os.replace(tmp, path)


def resolve(path: str | Path) -> Path:
    """A checkpoint file, or a run folder's ``checkpoints/last.pt``."""
    path = Path(path)
    return path / LAST if path.is_dir() else path


class CheckpointError(ValueError):
    """A checkpoint cannot be used: missing, damaged, foreign, or from another ssgan."""


def _archive_problem(file: Path) -> str | None:
    """What is wrong with ``file`` as a zip container (``torch.save``'s format), or None. Every
    member's CRC is checked, which ``torch.load`` does not do: a flipped bit in a weight would
    otherwise load silently."""
    if file.stat().st_size == 0:
        return "the file is empty"
    if not zipfile.is_zipfile(file):
        return "it is not a complete zip archive (truncated, or another kind of file)"
    try:
        with zipfile.ZipFile(file) as archive:
            damaged = archive.testzip()
    except (zipfile.BadZipFile, zlib.error, OSError, EOFError, ValueError, NotImplementedError,
            RuntimeError) as err:
        return f"its zip container is damaged ({type(err).__name__})"
    if damaged is not None:
        return f"its member {damaged} fails its CRC check (damaged: bit rot or a partial copy)"
    return None


def _unpickle_problem(err: Exception) -> str:
    """Why ``torch.load`` refused a file, in ssgan's words: its message may advise loading with
    ``weights_only=False``, which would run whatever code the file holds."""
    if isinstance(err, pickle.UnpicklingError):
        return "it holds objects other than tensors and plain containers"
    text = str(err)
    if "data.pkl" in text or "archive/" in text or "PytorchStreamReader" in text:
        return "its archive holds no torch-saved object"
    return f"torch.load failed with {type(err).__name__}"


def _check_contents(state: object, file: Path, hint: str) -> dict[str, Any]:
    """``state`` if it has the shape of an ssgan checkpoint of a format this ssgan reads."""
    if not isinstance(state, dict) or any(key not in state for key in REQUIRED):
        raise CheckpointError(f"{file} is not an ssgan checkpoint (expected a dict with "
                              f"{', '.join(REQUIRED)}); {hint}")
    fmt = state.get("format")
    if not isinstance(fmt, int) or isinstance(fmt, bool):
        raise CheckpointError(f"{file} has no checkpoint format number, so ssgan's save did not "
                              f"write it; {hint}")
    if fmt > FORMAT:
        raise CheckpointError(f"{file} was written by a newer ssgan (checkpoint format {fmt}, "
                              f"this one reads up to {FORMAT}); upgrade ssgan")
    if fmt < FORMAT:
        raise CheckpointError(f"{file} was written by an older ssgan (checkpoint format {fmt}, "
                              f"this one reads {FORMAT}); use the version that wrote it")
    shapes = {"epoch": int, "num_classes": int, "config": dict, "generator": dict,
              "discriminator": dict}
    for key, kind in shapes.items():
        if not isinstance(state[key], kind):
            raise CheckpointError(f"{file} holds a {type(state[key]).__name__} as {key!r} where "
                                  f"ssgan writes a {kind.__name__}: it is damaged; {hint}")
    return state


def load(path: str | Path, hint: str = "give a run folder or its checkpoints/last.pt"
         ) -> dict[str, Any]:
    """A checkpoint's contents (``torch.load(weights_only=True)``) from a file or a run
    folder, after every zip member's CRC is verified. A missing, empty, truncated, damaged or
    foreign file, or one of another checkpoint format, is a :class:`CheckpointError` (a
    ValueError) whose one-line message names it, says what was expected and, with ``hint``,
    what to do.

    Everything is loaded to the CPU: ``load_state_dict`` then moves weights and optimizer
    state to their parameters' devices (the fused Adam keeps its step counters there too)."""
    file = resolve(path)
    if not file.is_file():
        raise CheckpointError(f"no checkpoint at {file}; {hint}")
    problem = _archive_problem(file)
    if problem is None:
        try:
            state = torch.load(file, map_location="cpu", weights_only=True)
        except Exception as err:  # the unpickler and the zip reader raise many types
            problem = _unpickle_problem(err)
    if problem is not None:
        raise CheckpointError(f"{file} is not a readable ssgan checkpoint: {problem}; {hint}")
    return _check_contents(state, file, hint)


@contextlib.contextmanager
def building_from(file: Path) -> Iterator[None]:
    """Errors raised while models are built and loaded from a checkpoint's settings and
    weights become one :class:`CheckpointError` naming the file: contents that pass
    :func:`load` may still not fit (wrong shapes, values no model takes)."""
    try:
        yield
    except CheckpointError:
        raise
    except (RuntimeError, ValueError, TypeError, KeyError, IndexError, AttributeError) as err:
        raise CheckpointError(f"{file} holds settings or weights that do not fit the models "
                              f"they describe ({describe(err)}); it is damaged or from another "
                              "ssgan version") from None


def train_config(state: dict[str, Any], path: str | Path):
    """The checkpoint's :class:`ssgan.config.TrainConfig`; settings this ssgan does not know
    (a checkpoint from another version) are a CheckpointError naming them."""
    from ssgan.config import TrainConfig
    known = {f for f in TrainConfig.__dataclass_fields__}
    unknown = sorted(set(state["config"]) - known)
    if unknown:
        raise CheckpointError(f"{resolve(path)} was written by another ssgan version (unknown "
                              f"settings: {', '.join(map(str, unknown))}); use the version "
                              "that wrote it")
    defaults = TrainConfig()
    for name, value in state["config"].items():
        expected = type(getattr(defaults, name))
        fits = isinstance(value, expected) or (expected is float and type(value) is int)
        choices = TrainConfig.__dataclass_fields__[name].metadata["choices"]
        if not fits or isinstance(value, bool) != (expected is bool) or (
                choices and value not in choices):
            wanted = f"one of {', '.join(choices)}" if choices else f"a {expected.__name__}"
            raise CheckpointError(f"{resolve(path)} holds {name}={value!r}, which no ssgan "
                                  f"writes (expected {wanted}): it is damaged")
    return TrainConfig(**state["config"])


def rng_states(device: torch.device, batch_rng: torch.Generator) -> dict[str, Any]:
    """The random generators a training step draws from, as a checkpoint stores them."""
    return {"rng_cpu": torch.get_rng_state(), "rng_batches": batch_rng.get_state(),
            "rng_cuda": torch.cuda.get_rng_state_all() if device.type == "cuda" else []}


def default_rng_states(device: torch.device) -> tuple:
    """This process's default generators: the CPU's, and on CUDA its own GPU's (a rank that
    touched every GPU's generator would open a context on each)."""
    return (torch.get_rng_state(),
            torch.cuda.get_rng_state(device) if device.type == "cuda" else None)


def restore_default_rng_states(states: tuple, device: torch.device) -> None:
    """Puts back what :func:`default_rng_states` returned."""
    torch.set_rng_state(states[0])
    if states[1] is not None:
        torch.cuda.set_rng_state(states[1], device)


def restore_rng_states(state: dict[str, Any], batch_rng: torch.Generator) -> None:
    """Puts back what :func:`rng_states` saved."""
    torch.set_rng_state(state["rng_cpu"])
    batch_rng.set_state(state["rng_batches"])
    if state["rng_cuda"]:
        torch.cuda.set_rng_state_all(state["rng_cuda"])


def ema_weights(state: dict[str, Any]) -> dict[str, Any]:
    """The averaged discriminator's state dict from a checkpoint, or {} without --ema-decay."""
    return state.get("discriminator_ema", {})
