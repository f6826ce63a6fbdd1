"""PLMS: LDM's pseudo linear multistep sampler (Liu et al. 2022, PNDM family).

Each step plugs a combination of the current and up to three previous noise
predictions into the deterministic DDIM update. The very first step has no
history, so it uses a pseudo improved-Euler (Heun) step instead: predict with
eps at t, re-evaluate eps at the next timestep on that prediction, and redo
the step with the average. Only that first step costs two model calls.
"""

from __future__ import annotations

from typing import List, Optional

import torch
from torch import Tensor

from .ddim import Callback, EpsFn, Merge, SamplerBase
from .schedule import NoiseSchedule


def _multistep_eps(e_t: Tensor, old: List[Tensor]) -> Tensor:
    """Adams-Bashforth combination of e_t with the previous eps (old[-1] newest)."""
    if len(old) == 1:
        return (3 * e_t - old[-1]) / 2
    if len(old) == 2:
        return (23 * e_t - 16 * old[-1] + 5 * old[-2]) / 12
    return (55 * e_t - 59 * old[-1] + 37 * old[-2] - 9 * old[-3]) / 24


class PLMSSampler(SamplerBase):
    name = "PLMS"

    def __init__(self, schedule: NoiseSchedule, steps: int = 50, eta: float = 0.0, grid: str = "uniform"):
        if float(eta) != 0.0:
            raise ValueError(f"PLMSSampler is deterministic and needs eta=0, got eta={eta}")
        super().__init__(schedule, steps, 0.0, grid)

    def sample(
        self,
        eps_fn: EpsFn,
        x_T: Tensor,
        generator: Optional[torch.Generator] = None,  # unused (eta is 0); kept for the common interface
        progress: bool = True,
        callback: Optional[Callback] = None,
        merge: Optional[Merge] = None,
    ) -> Tensor:
        x = x_T
        old_eps: List[Tensor] = []
        for i in self._progress(progress):
            if merge is not None and merge.due(i, self.steps):
                x = merge.latents(x)
                old_eps = [merge.history(e) for e in old_eps]
            e_t = self._eps(eps_fn, x, self._t_batch(i, x), i)
            if not old_eps:
                e_prime = e_t
                if self.steps > 1:
                    # Heun correction; the second call keeps step_index i (0) so
                    # scheduled-sampling callers treat it as the same step.
                    x_pred, _ = self._update(x, e_t, i)
                    e_next = self._eps(eps_fn, x_pred, self._t_batch(i + 1, x), i)
                    e_prime = (e_t + e_next) / 2
            else:
                e_prime = _multistep_eps(e_t, old_eps)
            x, _ = self._update(x, e_prime, i)
            # History holds the raw model eps, not the combined ones (as in LDM).
            old_eps.append(e_t)
            if len(old_eps) > 3:
                old_eps.pop(0)
            if callback is not None:
                callback(i, x)
        if merge is not None and merge.due(self.steps, self.steps):
            x = merge.latents(x)
        return x
