"""Checkpoints: what a run saves after each epoch, and how it reads them back.

A checkpoint holds both players, their optimizers, the weight average, the metrics so far and
every random generator's state, so that ``--resume`` continues a run bit-exactly on a CPU.
It is written to a temporary file and renamed, so a kill mid-save keeps the previous one.
"""
from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

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


def load(path: str | Path, hint: str = "give a run folder or its checkpoints/last.pt"
         ) -> dict[str, Any]:
    """A checkpoint's contents (``torch.load(weights_only=True)``) from a file or a run
    folder. A missing, truncated or foreign file, or one from a newer ssgan, is a ValueError
    that names it and says what was expected (``hint`` where there is none).

    Everything is loaded to the CPU: ``load_state_dict`` then moves weights and optimizer
    state to their parameters' devices (the fused Adam keeps its step counters there too)."""
    file = resolve(path)
    if not file.is_file():
        raise ValueError(f"no checkpoint at {file}; {hint}")
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"{file} is not a readable ssgan checkpoint (truncated, corrupt or "
                         f"another kind of file: {reason}); {hint}") from None
    if not isinstance(state, dict) or any(key not in state for key in REQUIRED):
        raise ValueError(f"{file} is not an ssgan checkpoint (expected a dict with "
                         f"{', '.join(REQUIRED)}); {hint}")
    if state.get("format", 1) > FORMAT:
        raise ValueError(f"{file} was written by a newer ssgan (checkpoint format "
                         f"{state['format']}, this one reads up to {FORMAT}); upgrade ssgan")
    return state


def train_config(state: dict[str, Any], path: str | Path):
    """The checkpoint's :class:`ssgan.config.TrainConfig`; settings this ssgan does not know
    (a checkpoint from another version) are a ValueError naming them."""
    from ssgan.config import TrainConfig
    known = {f for f in TrainConfig.__dataclass_fields__}
    unknown = sorted(set(state["config"]) - known)
    if unknown:
        raise ValueError(f"{resolve(path)} was written by another ssgan version (unknown "
                         f"settings: {', '.join(unknown)}); use the version that wrote it")
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
