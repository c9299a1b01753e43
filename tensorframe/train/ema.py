"""An exponential moving average of the weights (MACE's and NequIP's ``ema``).

The model is evaluated, selected and saved with the averaged weights, trained with its own.
Summed outputs amplify weight noise: one Adam step on an energy head's last bias moves a
192-atom energy by 192 x lr x scale; the average over the last ~1/(1-decay) steps removes
that jitter from validation and from the saved model.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


class WeightAverage:
    """Shadow copies of ``model``'s parameters, ``avg = d avg + (1 - d) w`` after each step with
    ``d = min(decay, (1 + n) / (10 + n))`` (a short warm-up), n the number of updates so far."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema_decay: expected a number between 0 and 1, got {decay}")
        self.model = model
        self.decay = float(decay)
        self.updates = 0
        self.shadow = {name: p.detach().clone() for name, p in model.named_parameters()}

    @torch.no_grad()
    def update(self) -> None:
        d = min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))
        for name, p in self.model.named_parameters():
            self.shadow[name].mul_(d).add_(p.detach(), alpha=1.0 - d)
        self.updates += 1

    @contextmanager
    def averaged(self) -> Iterator[None]:
        """Within the block the model holds the averaged weights; its own come back after."""
        own = {name: p.detach().clone() for name, p in self.model.named_parameters()}
        with torch.no_grad():
            for name, p in self.model.named_parameters():
                p.copy_(self.shadow[name])
        try:
            yield
        finally:
            with torch.no_grad():
                for name, p in self.model.named_parameters():
                    p.copy_(own[name])

    def state_dict(self) -> dict:
        return {"updates": self.updates, "shadow": {k: v.clone() for k, v in self.shadow.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.updates = int(state["updates"])
        for name, value in state["shadow"].items():
            self.shadow[name].copy_(value)


__all__ = ["WeightAverage"]
