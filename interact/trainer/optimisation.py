"""What the optimiser step uses besides torch's own: the EMA of the trained weights and the lr schedule."""
from __future__ import annotations

import contextlib
import math

import torch
from torch import nn


class EMA:
    """Exponential moving average of the trained parameters, by name. The decay warms up as
    min(rate, (1 + n) / (10 + n)) after n updates: with a flat 0.9999 the average would hold
    mostly the random initialisation for the first tens of thousands of steps."""

    def __init__(self, named_params: dict[str, nn.Parameter], rate: float):
        self.rate = rate
        self.updates = 0
        self.shadow = {n: p.detach().clone() for n, p in named_params.items()}

    def decay(self) -> float:
        return min(self.rate, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, named_params: dict[str, nn.Parameter]) -> None:
        decay = self.decay()
        for n, p in named_params.items():
            self.shadow[n].lerp_(p.detach(), 1 - decay)
        self.updates += 1

    @contextlib.contextmanager
    def swapped_in(self, named_params: dict[str, nn.Parameter]):
        """The EMA weights in the model for the duration (previews, exports)."""
        saved = {n: p.detach().clone() for n, p in named_params.items()}
        with torch.no_grad():
            for n, p in named_params.items():
                p.copy_(self.shadow[n])
        try:
            yield
        finally:
            with torch.no_grad():
                for n, p in named_params.items():
                    p.copy_(saved[n])


def lr_lambda(warmup: int, total: int, kind: str):
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if kind == "cosine":
            progress = (step - warmup) / max(1, total - warmup)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        return 1.0
    return factor

