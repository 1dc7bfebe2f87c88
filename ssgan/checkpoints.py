"""Checkpoints: what a run saves after each epoch, and how it reads them back.

A checkpoint holds both players, their optimizers, the weight average, the metrics so far and
every random generator's state, so that ``--resume`` continues a run bit-exactly on a CPU.
It is written to a temporary file and renamed, so a kill mid-save keeps the previous one.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

LAST = Path("checkpoints") / "last.pt"  # inside a run folder


def save(state: dict[str, Any], path: Path) -> None:
    """Writes ``state`` to ``path`` atomically (a temporary file, then a rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load(path: str | Path, hint: str = "give the path of a run's checkpoints/last.pt"
         ) -> dict[str, Any]:
    """A checkpoint's contents (``torch.load(weights_only=True)``), or a ValueError with
    ``hint`` when there is none at ``path``.

    Everything is loaded to the CPU: ``load_state_dict`` then moves weights and optimizer
    moments to their parameters' devices while Adam's step counters stay on the CPU, as
    PyTorch keeps them (device-side counters would cost a host sync per parameter per step)."""
    if not Path(path).exists():
        raise ValueError(f"no checkpoint at {path}; {hint}")
    return torch.load(path, map_location="cpu", weights_only=True)


def rng_states(device: torch.device, batch_rng: torch.Generator) -> dict[str, Any]:
    """The random generators a training step draws from, as a checkpoint stores them."""
    return {"rng_cpu": torch.get_rng_state(), "rng_batches": batch_rng.get_state(),
            "rng_cuda": torch.cuda.get_rng_state_all() if device.type == "cuda" else []}


def restore_rng_states(state: dict[str, Any], batch_rng: torch.Generator) -> None:
    """Puts back what :func:`rng_states` saved."""
    torch.set_rng_state(state["rng_cpu"])
    batch_rng.set_state(state["rng_batches"])
    if state["rng_cuda"]:
        torch.cuda.set_rng_state_all(state["rng_cuda"])


def ema_weights(state: dict[str, Any]) -> dict[str, Any]:
    """The averaged discriminator's state dict from a checkpoint, or {} without --ema-decay."""
    return state.get("discriminator_ema", {})
