"""An exponential moving average of a module's weights, updated without host reads."""
from __future__ import annotations

import copy

import torch
from torch import nn

from ssgan.kernels._private_api import foreach_lerp_


class WeightAverage:
    """``average = decay * average + (1 - decay) * current`` after every step, for parameters
    and floating-point buffers (other buffers, e.g. BatchNorm's batch counter, are copied).

    Unlike ``torch.optim.swa_utils.AveragedModel``, whose update tests a device-side counter
    (one host read per step), the average starts as a copy of the module, so an update is one
    foreach lerp and nothing waits for the device."""

    def __init__(self, module: nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"--ema-decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.module = copy.deepcopy(module).requires_grad_(False)

    def _pairs(self, module: nn.Module) -> tuple[list, list, list, list]:
        averaged = [*self.module.parameters(), *self.module.buffers()]
        current = [*module.parameters(), *module.buffers()]
        floating = [i for i, t in enumerate(averaged) if t.is_floating_point()]
        others = [i for i in range(len(averaged)) if i not in set(floating)]
        return ([averaged[i] for i in floating], [current[i].detach() for i in floating],
                [averaged[i] for i in others], [current[i] for i in others])

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        """Moves the average towards ``module``'s current weights (same architecture)."""
        avg_float, cur_float, avg_other, cur_other = self._pairs(module)
        foreach_lerp_(avg_float, cur_float, 1.0 - self.decay)
        for avg, cur in zip(avg_other, cur_other):
            avg.copy_(cur)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.module.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.module.load_state_dict(state)
