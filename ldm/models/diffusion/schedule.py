"""The DDPM noise schedule of Stable Diffusion v1.x as a module of buffers.

The buffer names and shapes are those the released checkpoints carry (the
``diffusion`` section of the checkpoint manifest), so a checkpoint's schedule
loads straight into this module.
"""

from __future__ import annotations

import math
from typing import Optional, Union

import torch
from torch import Tensor, nn

# Registration order = the order in the released checkpoints.
BUFFER_NAMES = (
    "betas",
    "alphas_cumprod",
    "alphas_cumprod_prev",
    "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod",
    "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod",
    "posterior_variance",
    "posterior_log_variance_clipped",
    "posterior_mean_coef1",
    "posterior_mean_coef2",
)

SCHEDULES = ("linear",)


def make_betas(
    timesteps: int = 1000,
    linear_start: float = 0.00085,
    linear_end: float = 0.012,
    schedule: str = "linear",
) -> Tensor:
    """float64 betas of length ``timesteps``.

    "linear" follows LDM's naming: linear in sqrt(beta) space, then squared
    (diffusers calls this "scaled_linear").
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; expected one of {SCHEDULES}")
    if timesteps < 1:
        raise ValueError(f"timesteps must be >= 1, got {timesteps}")
    if not (0.0 < linear_start <= linear_end < 1.0):
        raise ValueError(
            f"need 0 < linear_start <= linear_end < 1, got {linear_start}, {linear_end}"
        )
    return torch.linspace(
        math.sqrt(linear_start), math.sqrt(linear_end), timesteps, dtype=torch.float64
    ) ** 2


def _gather(buf: Tensor, t: Union[int, Tensor], x: Tensor) -> Tensor:
    """buf[t] shaped to broadcast against x ([B] -> [B, 1, 1, ...])."""
    if not torch.is_tensor(t):
        t = torch.tensor([int(t)], device=buf.device)
    t = t.to(device=buf.device, dtype=torch.long).reshape(-1)
    out = buf[t].to(device=x.device, dtype=x.dtype)
    return out.reshape(out.shape[0], *([1] * (x.dim() - 1)))


PARAMETERIZATIONS = ("eps", "v")


class NoiseSchedule(nn.Module):
    """DDPM forward-process quantities (v_posterior = 0), stored as float32 buffers.

    `parameterization`: what the UNet predicts. "eps" (SD v1.x) is the noise; "v" (SD 2.x's
    768-v models, Salimans & Ho 2022) is v = sqrt(a) eps - sqrt(1-a) x0, for which the noise is
    eps = sqrt(a) v + sqrt(1-a) x_t. With v the UNet need not learn the near-identity
    eps ~ x_t of the noisiest steps, whose small errors eps-prediction amplifies by
    1/sqrt(a) (~15 at t = 999) into the first x0 estimates: small models trained briefly (the
    toy world) sample noise with eps and images with v."""

    def __init__(
        self,
        timesteps: int = 1000,
        linear_start: float = 0.00085,
        linear_end: float = 0.012,
        schedule: str = "linear",
        parameterization: str = "eps",
    ):
        super().__init__()
        if parameterization not in PARAMETERIZATIONS:
            raise ValueError(f"parameterization = {parameterization!r}: must be one of {PARAMETERIZATIONS}")
        self.parameterization = parameterization
        self.num_timesteps = int(timesteps)
        self.linear_start = float(linear_start)
        self.linear_end = float(linear_end)
        self.schedule = schedule

        # Everything in float64, rounded to float32 only when stored, so the
        # buffers match checkpoints produced the same way (numpy float64 in LDM).
        betas = make_betas(timesteps, linear_start, linear_end, schedule)
        alphas = 1.0 - betas
        ac = torch.cumprod(alphas, dim=0)
        ac_prev = torch.cat([torch.ones(1, dtype=torch.float64), ac[:-1]])
        post_var = betas * (1.0 - ac_prev) / (1.0 - ac)

        values = {
            "betas": betas,
            "alphas_cumprod": ac,
            "alphas_cumprod_prev": ac_prev,
            "sqrt_alphas_cumprod": ac.sqrt(),
            "sqrt_one_minus_alphas_cumprod": (1.0 - ac).sqrt(),
            "log_one_minus_alphas_cumprod": (1.0 - ac).log(),
            "sqrt_recip_alphas_cumprod": (1.0 / ac).sqrt(),
            "sqrt_recipm1_alphas_cumprod": (1.0 / ac - 1.0).sqrt(),
            "posterior_variance": post_var,
            # LDM's clipping: log(max(var, 1e-20)). posterior_variance[0] is 0,
            # so index 0 holds log(1e-20); (improved-diffusion would instead
            # repeat posterior_variance[1] there.)
            "posterior_log_variance_clipped": post_var.clamp(min=1e-20).log(),
            "posterior_mean_coef1": betas * ac_prev.sqrt() / (1.0 - ac),
            "posterior_mean_coef2": (1.0 - ac_prev) * alphas.sqrt() / (1.0 - ac),
        }
        for name in BUFFER_NAMES:
            self.register_buffer(name, values[name].to(torch.float32))

    def extra_repr(self) -> str:
        return (
            f"timesteps={self.num_timesteps}, linear_start={self.linear_start}, "
            f"linear_end={self.linear_end}, schedule={self.schedule!r}, "
            f"parameterization={self.parameterization!r}"
        )

    def training_target(self, x0: Tensor, t: Union[int, Tensor], noise: Tensor) -> Tensor:
        """What the UNet is trained to output for x_t = q_sample(x0, t, noise)."""
        if self.parameterization == "eps":
            return noise
        return _gather(self.sqrt_alphas_cumprod, t, x0) * noise - _gather(self.sqrt_one_minus_alphas_cumprod, t, x0) * x0

    def to_eps(self, x_t: Tensor, t: Union[int, Tensor], output: Tensor) -> Tensor:
        """The UNet's output -> the noise prediction the samplers take."""
        if self.parameterization == "eps":
            return output
        return (_gather(self.sqrt_alphas_cumprod, t, x_t) * output
                + _gather(self.sqrt_one_minus_alphas_cumprod, t, x_t) * x_t)

    def q_sample(self, x0: Tensor, t: Union[int, Tensor], noise: Optional[Tensor] = None) -> Tensor:
        """Sample x_t ~ q(x_t | x0); t is an int or a LongTensor [B] (one per batch element)."""
        if noise is None:
            noise = torch.randn_like(x0)
        return (
            _gather(self.sqrt_alphas_cumprod, t, x0) * x0
            + _gather(self.sqrt_one_minus_alphas_cumprod, t, x0) * noise
        )

    def predict_x0(self, x_t: Tensor, t: Union[int, Tensor], eps: Tensor) -> Tensor:
        """Invert q_sample given the noise: x0 = (x_t - sqrt(1-a) eps) / sqrt(a)."""
        return (
            _gather(self.sqrt_recip_alphas_cumprod, t, x_t) * x_t
            - _gather(self.sqrt_recipm1_alphas_cumprod, t, x_t) * eps
        )
