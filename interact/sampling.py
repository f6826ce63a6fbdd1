"""How an image is sampled: the options (SamplingOptions, the single source of their defaults,
types, ranges and help; a config's `sampling:` section and the command-line flags come from it)
and the fusers' schedule over the steps (scheduled sampling).

Every control reads its own options here (DenseDiffusion's dense_*, the token controls'
scheduled sampling, the multi-instance sampler); the pipeline resolves them once per call.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from omegaconf import OmegaConf

from hoi.schema import check_options, option
from ldm.models.diffusion.solvers import SOLVERS

SAMPLERS = ("plms", "ddim", *SOLVERS)
Sampler = Literal["plms", "ddim", "dpmpp_2m", "unipc", "euler_a"]  # = SAMPLERS (tests/test_pipeline.py checks)
# What the reference inference script fixes (reference_compat): its step counts per sampler and
# its default negative prompt. (Its --seed default is 489; this project keeps its own default.)
REFERENCE_STEPS = {"plms": 50, "ddim": 250}
REFERENCE_NEGATIVE_PROMPT = ("longbody, lowres, bad anatomy, bad hands, missing fingers, extra digit, fewer digits, "
                             "cropped, worst quality, low quality")


@dataclass
class SamplingOptions:
    """How an image is sampled: the single source of these options' defaults, types, ranges
    and help. A config's `sampling:` section is checked against it and overrides its defaults;
    call arguments (and the command-line flags generated from it) override the config.
    Field order is the order of the keys in the batch sidecars."""
    guidance_scale: float = option(7.5, "classifier-free guidance (1 = off)", check=lambda v: v >= 0, rule=">= 0")
    steps: int = option(50, "sampling steps", check=lambda v: v >= 1, rule=">= 1")
    sampler: Sampler = option("plms", "sampler: plms, ddim (LDM's), dpmpp_2m (DPM-Solver++ 2M), unipc, euler_a "
                                      "(diffusers' schedulers)")
    scheduled_sampling: float = option(1.0, "beta: fusers on for the first int(beta*steps) steps, off after",
                                       check=lambda v: 0 <= v <= 1, rule="in [0, 1]",
                                       flags=("--scheduled-sampling",))
    negative_prompt: str = option("", "prompt of the unconditional branch")
    height: int = option(512, "image height in pixels", check=lambda v: v >= 1, rule=">= 1")
    width: int = option(512, "image width in pixels", check=lambda v: v >= 1, rule=">= 1")
    eta: float = option(0.0, "DDIM eta (0: deterministic; only DDIM takes it)", check=lambda v: v >= 0, rule=">= 0")
    scheduled_decay: float = option(0.0, "after the beta stage the fusers fade linearly to 0 over int(decay*steps) "
                                         "steps (GLIGEN's alpha schedule [beta, decay, rest]); beta + decay <= 1",
                                    check=lambda v: 0 <= v <= 1, rule="in [0, 1]", flags=("--scheduled-decay",))
    karras_sigmas: bool = option(False, "Karras et al.'s sigma grid (dpmpp_2m and unipc only)")
    multi_instance: float = option(0.0, "multi-instance sampler: for the first int(M*steps) steps each instance "
                                        "(an interaction, a phrase) is also sampled alone from the same noise, on its "
                                        "own latent (its own caption and grounding), then the latents are averaged "
                                        "and sampling goes on with the full condition (InstanceDiffusion's; 0.36 as "
                                        "there; 0 = off)", check=lambda v: 0 <= v <= 1, rule="in [0, 1]")
    dense_steps: float = option(0.3, "DenseDiffusion (when segments are given): its attention modulation runs for "
                                     "the first int(D*steps) steps", check=lambda v: 0 <= v <= 1, rule="in [0, 1]")
    dense_self_weight: float = option(0.3, "DenseDiffusion's weight w of self-attention", check=lambda v: v >= 0,
                                      rule=">= 0")
    dense_cross_weight: float = option(1.0, "DenseDiffusion's weight w of cross-attention", check=lambda v: v >= 0,
                                       rule=">= 0")
    dense_phrase_embeddings: bool = option(True, "DenseDiffusion: replace each segment phrase's tokens by the phrase "
                                                 "encoded alone (its own method); false keeps the prompt's")
    reference_compat: bool = option(False, "reproduce the reference code's images: one global seed with noise drawn "
                                           "record after record, LDM's timestep grid, PLMS 50 / DDIM 250 steps and "
                                           "its negative prompt unless given, pixels truncated to uint8")


def sampling_defaults(config) -> dict:
    """A model config's `sampling:` section over SamplingOptions' defaults, checked (ValueError
    naming `sampling.<key>`). Needs no model: a batch run resolves its options before loading."""
    section = config.get("sampling") if config is not None else None
    return OmegaConf.to_container(check_options(SamplingOptions, section, "sampling"))


def resolve_sampling(defaults: dict, **given) -> SamplingOptions:
    """Call arguments (None = unset) over `defaults` (from sampling_defaults), checked against
    the schema; the model's own limits are checked by InteractDiffusionPipeline.resolve_options.
    With reference_compat, unset steps and negative prompt take the reference script's values."""
    given = {k: v for k, v in given.items() if v is not None}
    values = {**defaults, **given}
    if values.get("reference_compat"):
        if "steps" not in given and values.get("sampler") in REFERENCE_STEPS:
            values["steps"] = REFERENCE_STEPS[values["sampler"]]
        if "negative_prompt" not in given:
            values["negative_prompt"] = REFERENCE_NEGATIVE_PROMPT
    return OmegaConf.to_object(check_options(SamplingOptions, values, "sampling"))


def fuser_scale(step_index: int, steps: int, beta: float, decay: float = 0.0) -> float:
    """Scheduled sampling, GLIGEN's alpha schedule [beta, decay, rest]: 1 for the first
    int(beta * steps) steps, then int(decay * steps) steps falling linearly from (L-1)/L to 0
    (L that count, value k * (1/L) counted down as the reference computes it), then 0."""
    on, fading = int(beta * steps), int(decay * steps)
    if step_index < on:
        return 1.0
    if step_index < on + fading:
        return (fading - 1 - (step_index - on)) * (1.0 / fading)
    return 0.0
