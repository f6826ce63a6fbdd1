"""Fast samplers from diffusers' schedulers behind the project's sampler interface (ddim.py's).

    sampler = SolverSampler(schedule, steps=20, kind="dpmpp_2m", karras_sigmas=False)
    x0 = sampler.sample(eps_fn, x_T, generator=None, progress=True, callback=None)

Kinds (diffusers classes; what they are):
- "dpmpp_2m": DPMSolverMultistepScheduler, DPM-Solver++ 2M (Lu et al. 2022), second-order
  multistep in the data-prediction form; `karras_sigmas` takes Karras et al.'s sigma grid;
- "unipc": UniPCMultistepScheduler, UniPC (Zhao et al. 2023), a predictor-corrector (bh2);
  `karras_sigmas` as above;
- "euler_a": EulerAncestralDiscreteScheduler, Euler steps in sigma space with fresh noise at
  every step (stochastic).

Why diffusers: these are maintained, widely used implementations with their own tests; the
project only adapts them. The scheduler is built from the model's own NoiseSchedule (its betas
as `trained_betas`), predicts epsilon (the pipeline's eps_fn turns v into eps), and uses the
"trailing" timestep spacing, whose first step is the noisiest training timestep (999), so few
steps still start from pure noise. Every timestep it hands to the model is an integer.

The interface is the other samplers': `x_T` is unit-variance noise (scaled here by the
scheduler's init_noise_sigma), `eps_fn(x, t, step_index)` gets the model input at integer
timesteps t and returns the guided noise prediction, `callback(step_index, x)` follows every
step. diffusers is imported only when such a sampler is built.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .ddim import Callback, EpsFn, Merge, _check_steps
from .schedule import NoiseSchedule

# kind -> (diffusers class name, extra constructor arguments, takes karras_sigmas)
SOLVERS = {
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}, True),
    "unipc": ("UniPCMultistepScheduler", {"solver_order": 2, "solver_type": "bh2"}, True),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}, False),
}


def takes_karras_sigmas(kind: str) -> bool:
    return SOLVERS[kind][2]


class SolverSampler:
    def __init__(self, schedule: NoiseSchedule, steps: int = 20, kind: str = "dpmpp_2m", karras_sigmas: bool = False):
        if kind not in SOLVERS:
            raise ValueError(f"sampler = {kind!r}: not one of {tuple(SOLVERS)}")
        class_name, extra, karras_ok = SOLVERS[kind]
        if karras_sigmas and not karras_ok:
            raise ValueError(f"karras_sigmas: sampler {kind!r} does not take Karras sigmas "
                             f"(those that do: {[k for k in SOLVERS if SOLVERS[k][2]]})")
        T = int(schedule.betas.shape[0])
        _check_steps(steps, T)
        import diffusers

        if karras_sigmas:
            extra = {**extra, "use_karras_sigmas": True}
        self.scheduler = getattr(diffusers, class_name)(
            num_train_timesteps=T, trained_betas=schedule.betas.detach().double().cpu().numpy(),
            prediction_type="epsilon", timestep_spacing="trailing", **extra)
        self.scheduler.set_timesteps(steps)
        self.kind, self.steps, self.karras_sigmas = kind, steps, karras_sigmas
        self.name = kind
        self.timesteps = self.scheduler.timesteps.round().long()
        if len(self.timesteps) != steps:
            raise RuntimeError(f"{class_name} made {len(self.timesteps)} timesteps for {steps} steps")

    def __repr__(self) -> str:
        return f"SolverSampler(kind={self.kind!r}, steps={self.steps}, karras_sigmas={self.karras_sigmas})"

    def _step_kwargs(self, generator):
        # only the ancestral sampler draws noise (and only its step takes a generator)
        return {"generator": generator} if self.kind == "euler_a" else {}

    def _merge(self, merge: Merge) -> None:
        """The scheduler's per-row state collapsed: its history of model outputs by
        merge.history, its previous sample (UniPC's corrector reads it) by merge.latents."""
        s = self.scheduler
        if hasattr(s, "model_outputs"):
            s.model_outputs = [None if m is None else merge.history(m) for m in s.model_outputs]
        if isinstance(getattr(s, "last_sample", None), Tensor):
            s.last_sample = merge.latents(s.last_sample)

    def sample(self, eps_fn: EpsFn, x_T: Tensor, generator: Optional[torch.Generator] = None, progress: bool = True,
               callback: Optional[Callback] = None, merge: Optional[Merge] = None) -> Tensor:
        s = self.scheduler
        s.set_timesteps(self.steps)  # resets the multistep history: the sampler can be reused
        x = x_T * s.init_noise_sigma
        for i in tqdm(range(self.steps), desc=self.name, leave=False, disable=not progress):
            if merge is not None and merge.due(i, self.steps):
                x = merge.latents(x)
                self._merge(merge)
            t_step = s.timesteps[i]
            model_input = s.scale_model_input(x, t_step)
            t = torch.full((x.shape[0],), int(self.timesteps[i]), dtype=torch.long, device=x.device)
            eps = eps_fn(model_input, t, i)
            if eps.shape != x.shape:
                raise ValueError(f"eps_fn returned shape {tuple(eps.shape)} for x of shape {tuple(x.shape)}")
            x = s.step(eps, t_step, x, **self._step_kwargs(generator), return_dict=False)[0]
            if callback is not None:
                callback(i, x)
        if merge is not None and merge.due(self.steps, self.steps):
            x = merge.latents(x)
        return x
