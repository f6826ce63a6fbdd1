"""DDIM sampling (Song et al. 2021) on LDM's "uniform" timestep grid.

Samplers share one interface, used by the pipeline::

    sampler = DDIMSampler(schedule, steps=50, eta=0.0)
    sampler.timesteps            # LongTensor [steps], descending (noisiest first)
    x0 = sampler.sample(eps_fn, x_T, generator=None, progress=True, callback=None)

``eps_fn(x, t, step_index)`` gets x [B, C, H, W], t a LongTensor [B] on x's
device and the step index 0..steps-1 in sampling order, and returns the
(already classifier-free-guided) noise prediction. ``callback(step_index, x)``
is called after every step with the new latent. ``merge`` (a Merge) collapses the
batch's rows before step ``merge.step``: branches sampled side by side become one
row each (the multi-instance sampler), the latents and every latent-space state by
``merge.latents``, the history of model outputs by ``merge.history``. Sampling does
not switch off autograd; callers wrap it in ``torch.no_grad()``/``torch.inference_mode()``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .schedule import NoiseSchedule

EpsFn = Callable[[Tensor, Tensor, int], Tensor]
Callback = Callable[[int, Tensor], None]


@dataclass(frozen=True)
class Merge:
    """Before step `step` runs (or after the last, when `step` == the step count), the rows of
    the batch collapse: x and other latent-space state by `latents`, the sampler's history of
    model outputs by `history` (both [N, ...] -> [B, ...])."""
    step: int
    latents: Callable[[Tensor], Tensor]
    history: Callable[[Tensor], Tensor]

    def due(self, i: int, steps: int) -> bool:
        return i == min(self.step, steps)


def make_uniform_timesteps(num_train_timesteps: int, steps: int) -> Tensor:
    """LDM's "uniform" grid, ascending, always exactly ``steps`` long.

    When ``steps`` divides T (and steps < T) this is exactly LDM's
    ``arange(0, T, T // steps) + 1`` (50 of 1000: 1, 21, ..., 981). LDM's
    formula yields more than ``steps`` entries when ``steps`` does not divide T
    and indexes past the schedule when the +1 reaches T (e.g. steps = T, or
    steps = 3), so in general we take floor(i * T / steps) + 1, and drop the +1
    only for steps == T, where the grid is every training timestep 0..T-1.
    """
    _check_steps(steps, num_train_timesteps)
    offset = 1 if steps < num_train_timesteps else 0
    i = torch.arange(steps, dtype=torch.long)
    return (i * num_train_timesteps) // steps + offset


def make_reference_timesteps(num_train_timesteps: int, steps: int) -> Tensor:
    """LDM's own "uniform" grid, as the reference code samples: arange(0, T, T // steps) + 1,
    ascending. When `steps` does not divide T this has more than `steps` entries (30 of 1000:
    c = 33, 31 steps, 1 ... 991); a grid whose +1 reaches T would index past the schedule, which
    the reference crashes on, so it is refused here."""
    _check_steps(steps, num_train_timesteps)
    grid = torch.arange(0, num_train_timesteps, num_train_timesteps // steps, dtype=torch.long) + 1
    if int(grid[-1]) >= num_train_timesteps:
        raise ValueError(f"steps = {steps}: the reference's grid arange(0, {num_train_timesteps}, "
                         f"{num_train_timesteps // steps}) + 1 reaches timestep {int(grid[-1])}, past the "
                         f"schedule (the reference code fails there too); choose another step count")
    return grid


GRIDS = {"uniform": make_uniform_timesteps, "reference": make_reference_timesteps}


def _check_steps(steps, num_train_timesteps: int) -> None:
    if isinstance(steps, bool) or not isinstance(steps, int):
        raise ValueError(f"steps must be an int, got {steps!r}")
    if not 1 <= steps <= num_train_timesteps:
        raise ValueError(
            f"steps must be in [1, {num_train_timesteps}] (the schedule's timesteps), got steps={steps}"
        )


class SamplerBase:
    """Timestep grid and per-step DDIM coefficients shared by DDIM and PLMS.

    Per-step tensors (``timesteps``, ``alphas``, ``alphas_prev``, ``sigmas``)
    are in sampling order: index i is step_index i. The alphas are float64 on
    the CPU, taken from the schedule's float32 ``alphas_cumprod``, the way LDM
    takes them from the model's buffer. ``grid``: "uniform" (exactly ``steps``
    steps) or "reference" (LDM's formula as the reference code uses it; ``self.steps``
    is then the grid's length, which may exceed the ``steps`` asked for).
    """

    name = "sampler"

    def __init__(self, schedule: NoiseSchedule, steps: int = 50, eta: float = 0.0, grid: str = "uniform"):
        eta = float(eta)
        if not math.isfinite(eta) or eta < 0:
            raise ValueError(f"eta must be a finite number >= 0, got eta={eta}")
        if grid not in GRIDS:
            raise ValueError(f"grid = {grid!r}: must be one of {tuple(GRIDS)}")
        T = int(schedule.alphas_cumprod.shape[0])
        ts = GRIDS[grid](T, steps)
        self.schedule = schedule
        self.steps = len(ts)
        self.eta = eta

        ac = schedule.alphas_cumprod.detach().to("cpu", torch.float64)
        a = ac[ts]
        # The last step lands on alphas_cumprod[0] (t = 0), not on clean data.
        a_prev = torch.cat([ac[:1], ac[ts[:-1]]])
        sigmas = eta * ((1 - a_prev) / (1 - a) * (1 - a / a_prev)).sqrt()

        self.timesteps = ts.flip(0)
        self.alphas = a.flip(0)
        self.alphas_prev = a_prev.flip(0)
        self.sigmas = sigmas.flip(0)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(steps={self.steps}, eta={self.eta})"

    def _t_batch(self, i: int, x: Tensor) -> Tensor:
        return torch.full((x.shape[0],), int(self.timesteps[i]), dtype=torch.long, device=x.device)

    @staticmethod
    def _eps(eps_fn: EpsFn, x: Tensor, t: Tensor, i: int) -> Tensor:
        eps = eps_fn(x, t, i)
        if eps.shape != x.shape:
            raise ValueError(f"eps_fn returned shape {tuple(eps.shape)} for x of shape {tuple(x.shape)}")
        return eps

    def _noise(self, x: Tensor, generator: Optional[torch.Generator]) -> Tensor:
        # Draw on the generator's device so a CPU generator gives the same
        # noise whatever device x lives on.
        device = generator.device if generator is not None else x.device
        return torch.randn(x.shape, generator=generator, device=device, dtype=x.dtype).to(x.device)

    def _update(self, x: Tensor, eps: Tensor, i: int, noise: Optional[Tensor] = None):
        """One DDIM step from step i's timestep to the next; returns (x_prev, pred_x0)."""
        a = float(self.alphas[i])
        a_prev = float(self.alphas_prev[i])
        sigma = float(self.sigmas[i]) if noise is not None else 0.0
        pred_x0 = (x - math.sqrt(1 - a) * eps) / math.sqrt(a)
        # Clamped at 0: for eta > 1 sigma^2 can exceed 1 - a_prev.
        dir_coef = math.sqrt(max(1 - a_prev - sigma**2, 0.0))
        x_prev = math.sqrt(a_prev) * pred_x0 + dir_coef * eps
        if sigma > 0:
            x_prev = x_prev + sigma * noise
        return x_prev, pred_x0

    def _progress(self, progress: bool):
        return tqdm(range(self.steps), desc=self.name, leave=False, disable=not progress)


class DDIMSampler(SamplerBase):
    """DDIM; eta = 0 is deterministic, eta = 1 matches DDPM's posterior variance."""

    name = "DDIM"

    def sample(
        self,
        eps_fn: EpsFn,
        x_T: Tensor,
        generator: Optional[torch.Generator] = None,
        progress: bool = True,
        callback: Optional[Callback] = None,
        merge: Optional[Merge] = None,
    ) -> Tensor:
        x = x_T
        for i in self._progress(progress):
            if merge is not None and merge.due(i, self.steps):
                x = merge.latents(x)
            eps = self._eps(eps_fn, x, self._t_batch(i, x), i)
            noise = self._noise(x, generator) if float(self.sigmas[i]) > 0 else None
            x, _ = self._update(x, eps, i, noise)
            if callback is not None:
                callback(i, x)
        if merge is not None and merge.due(self.steps, self.steps):
            x = merge.latents(x)
        return x
