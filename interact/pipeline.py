"""Prompt + interactions -> images.

    pipe = InteractDiffusionPipeline.from_checkpoint("interact-diffusion-v1-2.pth")
    images = pipe("a person feeding a cat", interactions=[Interaction(
        subject="person", action="feeding", object="cat",
        subject_box=(0.1, 0.2, 0.5, 0.9), object_box=(0.55, 0.5, 0.9, 0.9))], seed=0)

Classifier-free guidance: the unconditional branch gets the negative (or empty)
prompt and the null grounding (every slot masked). Scheduled sampling: the fusers
run for the first int(beta * steps) steps (the noisiest) and are skipped after.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Sequence

import torch
from PIL import Image, ImageDraw

from omegaconf import OmegaConf

from hoi.device import resolve_device, resolve_dtype
from hoi.schema import check_options, option
from interact.checkpoint import CheckpointError, load_weights
from interact.conditions import Cond
from hoi.records import ConditionError, Interaction, check_interactions
from interact.model import SD_V1_CONFIG, InteractDiffusion, build_model, load_config, set_interaction_options
from ldm.models.diffusion.ddim import DDIMSampler
from ldm.models.diffusion.plms import PLMSSampler

SAMPLERS = {"plms": PLMSSampler, "ddim": DDIMSampler}


@dataclass
class SamplingOptions:
    """How an image is sampled: the single source of these options' defaults, types, ranges
    and help. A config's `sampling:` section is checked against it and overrides its defaults;
    call arguments (and the command-line flags generated from it) override the config.
    Field order is the order of the keys in the batch sidecars."""
    guidance_scale: float = option(7.5, "classifier-free guidance (1 = off)", check=lambda v: v >= 0, rule=">= 0")
    steps: int = option(50, "sampling steps", check=lambda v: v >= 1, rule=">= 1")
    sampler: Literal["plms", "ddim"] = option("plms", "sampler")
    scheduled_sampling: float = option(1.0, "beta: fusers on for the first int(beta*steps) steps, off after",
                                       check=lambda v: 0 <= v <= 1, rule="in [0, 1]",
                                       flags=("--scheduled-sampling",))
    negative_prompt: str = option("", "prompt of the unconditional branch")
    height: int = option(512, "image height in pixels", check=lambda v: v >= 1, rule=">= 1")
    width: int = option(512, "image width in pixels", check=lambda v: v >= 1, rule=">= 1")
    eta: float = option(0.0, "DDIM eta (0: deterministic; PLMS needs 0)", check=lambda v: v >= 0, rule=">= 0")


def sampling_defaults(config) -> dict:
    """A model config's `sampling:` section over SamplingOptions' defaults, checked (ValueError
    naming `sampling.<key>`). Needs no model: a batch run resolves its options before loading."""
    section = config.get("sampling") if config is not None else None
    return OmegaConf.to_container(check_options(SamplingOptions, section, "sampling"))


def resolve_sampling(defaults: dict, **given) -> SamplingOptions:
    """Call arguments (None = unset) over `defaults` (from sampling_defaults), checked against
    the schema; the model's own limits are checked by InteractDiffusionPipeline.resolve_options."""
    values = {**defaults, **{k: v for k, v in given.items() if v is not None}}
    return OmegaConf.to_object(check_options(SamplingOptions, values, "sampling"))


def fuser_scale(step_index: int, steps: int, beta: float) -> float:
    """Scheduled sampling: 1 for the first int(beta * steps) steps, then 0."""
    return 1.0 if step_index < int(beta * steps) else 0.0


class InteractDiffusionPipeline:
    def __init__(self, model: InteractDiffusion, device=None, dtype: torch.dtype = torch.float32,
                 source: str = "random weights"):
        self.device = resolve_device(device) if not isinstance(device, torch.device) else device
        self.dtype = dtype
        self.model = model.to(self.device, dtype).eval()
        self.source = source
        self.sampling_defaults = sampling_defaults(model.config)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_config(cls, config=SD_V1_CONFIG, seed: int = 0, tokenizer_path=None, device=None, half=False,
                    interaction: dict | None = None):
        """Random weights (tests and timing). `interaction`: overrides of the config's
        interaction switches ({"fuser_type": ..., "role_embedding": ...}; None values keep it)."""
        from ldm.modules.encoders.clip_tokenizer import load_clip_tokenizer
        torch.manual_seed(seed)
        config = set_interaction_options(load_config(config), **(interaction or {}))
        model = build_model(config, tokenizer=load_clip_tokenizer(tokenizer_path))
        device = resolve_device(device)
        return cls(model, device, resolve_dtype(device, half), source=f"random weights (seed {seed})")

    @classmethod
    def from_checkpoint(cls, ckpt=None, sd_ckpt=None, config=None, text_encoder=None, device=None, half=False,
                        allow_pickle=False, interaction: dict | None = None):
        """`ckpt`: an InteractDiffusion file; with `sd_ckpt` (an SD v1.x .ckpt/.safetensors) the
        backbone comes from there and only the interaction weights from `ckpt`. `text_encoder`:
        a Hugging Face CLIP text model folder, for files without text encoder weights.
        Nothing is downloaded."""
        from ldm.modules.encoders.clip_tokenizer import load_clip_tokenizer
        from ldm.modules.encoders.modules import FrozenCLIPEmbedder
        for label, path in (("--ckpt", ckpt), ("--sd_ckpt", sd_ckpt), ("--text_encoder", text_encoder)):
            if path is not None and not Path(path).exists():
                raise FileNotFoundError(f"{label} {path}: no such file or folder")
        config = set_interaction_options(load_config(config or SD_V1_CONFIG), **(interaction or {}))
        device = resolve_device(device)
        # Built on the meta device: every tensor then comes from the files without a
        # random initialisation first (SD v1.x: ~25 s and 4 GB saved).
        if text_encoder is not None:
            encoder = FrozenCLIPEmbedder.from_pretrained_folder(text_encoder)
            model = build_model(config, tokenizer=encoder.tokenizer, device="meta")
            model.text_encoder = encoder
        else:
            model = build_model(config, tokenizer=load_clip_tokenizer(), device="meta")
        load_weights(model, ckpt, sd_ckpt, purpose="generate", allow_pickle=allow_pickle,
                     text_encoder_given=text_encoder is not None)
        source = " + ".join(str(p) for p in (sd_ckpt, ckpt) if p is not None)
        return cls(model, device, resolve_dtype(device, half), source=source)

    # ------------------------------------------------------------------ validation
    def _latent_shape(self, height: int, width: int) -> tuple[int, int, int]:
        ae, unet = self.model.autoencoder, self.model.unet
        # Each UNet level below the first halves the latent once more.
        factor = ae.downsample_factor * 2 ** (unet.num_levels - 1)
        for name, value in (("height", height), ("width", width)):
            if not isinstance(value, int) or value <= 0 or value % factor:
                raise ValueError(f"{name} = {value!r}: must be a positive multiple of {factor} for this model")
        channels = unet.in_channels
        return channels, height // ae.downsample_factor, width // ae.downsample_factor

    def _check_options(self, options: SamplingOptions) -> None:
        """The limits of this model (the schema has checked types and plain ranges)."""
        timesteps = self.model.diffusion.betas.shape[0]
        if options.steps > timesteps:
            raise ValueError(f"steps = {options.steps!r}: must be an integer in [1, {timesteps}]")
        if options.sampler == "plms" and options.eta != 0:
            raise ValueError(f"eta = {options.eta!r}: PLMS is deterministic (eta 0); use sampler='ddim' for eta > 0")
        self._latent_shape(options.height, options.width)

    @staticmethod
    def _batch(prompt, interactions, negative_prompt, seed, max_interactions):
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if not prompts or not all(isinstance(p, str) for p in prompts):
            raise ValueError(f"prompt = {prompt!r}: must be a string or a non-empty list of strings")
        b = len(prompts)
        if interactions is None:
            interactions = [[] for _ in range(b)]
        elif len(interactions) == 0 or isinstance(interactions[0], Interaction):
            interactions = [list(interactions)] * b  # one list, shared by every prompt
        if len(interactions) != b:
            raise ValueError(f"interactions: {len(interactions)} lists for {b} prompts; give one list per prompt")
        interactions = [check_interactions(items, max_interactions, f"prompt {i}") for i, items in
                        enumerate(interactions)]
        negative = negative_prompt if not isinstance(negative_prompt, str) else [negative_prompt] * b
        if len(negative) != b:
            raise ValueError(f"negative_prompt: {len(negative)} given for {b} prompts")
        seeds = [seed + i for i in range(b)] if isinstance(seed, int) else list(seed)
        if len(seeds) != b or not all(isinstance(s, int) for s in seeds):
            raise ValueError(f"seed = {seed!r}: an int, or one int per prompt")
        return prompts, interactions, list(negative), seeds

    # ------------------------------------------------------------------ generation
    def resolve_options(self, guidance_scale=None, steps=None, sampler=None, scheduled_sampling=None,
                        negative_prompt=None, height=None, width=None, eta=None) -> SamplingOptions:
        """Unset (None) options from the config's `sampling` section, then SamplingOptions'
        defaults; checked against the schema and this model. Raises ValueError naming the option."""
        options = resolve_sampling(self.sampling_defaults, guidance_scale=guidance_scale, steps=steps,
                                   sampler=sampler, scheduled_sampling=scheduled_sampling,
                                   negative_prompt=negative_prompt, height=height, width=width, eta=eta)
        self._check_options(options)
        return options

    def check_call_options(self, **options) -> dict:
        """resolve_options as keyword arguments of __call__ (in SamplingOptions' field order)."""
        return dataclasses.asdict(self.resolve_options(**options))

    @torch.no_grad()
    def __call__(self, prompt: str | Sequence[str], interactions=None, negative_prompt=None,
                 guidance_scale=None, steps=None, sampler=None, scheduled_sampling=None, height=None,
                 width=None, seed: int | Sequence[int] = 0, eta: float | None = None, progress: bool = True,
                 output_type: str = "pil"):
        """Returns a list of PIL images (output_type "pil") or a [B,3,H,W] tensor in [0,1] ("pt").
        `interactions`: a list of Interaction for a single prompt (or for every prompt), or one
        list per prompt (counts may differ). Image i uses seed + i (or seed[i]), so an image does
        not depend on what else is in the batch (except DDIM with eta > 0, whose per-step noise
        is drawn for the whole batch from the first seed). Unset options come from the config."""
        if output_type not in ("pil", "pt"):
            raise ValueError(f"output_type = {output_type!r}: must be 'pil' or 'pt'")
        o = self.check_call_options(guidance_scale=guidance_scale, steps=steps, sampler=sampler,
                                    scheduled_sampling=scheduled_sampling, negative_prompt=negative_prompt,
                                    height=height, width=width, eta=eta)
        guidance_scale, steps, beta = o["guidance_scale"], o["steps"], o["scheduled_sampling"]
        latent_shape = self._latent_shape(o["height"], o["width"])
        model = self.model
        prompts, batch, negatives, seeds = self._batch(prompt, interactions, o["negative_prompt"], seed,
                                                       model.interaction_tokenizer.max_interactions)
        cond = model.condition(prompts, batch)
        use_cfg = guidance_scale != 1.0
        if use_cfg:  # one forward for both branches; the unconditional one: the negative prompt, no controls
            cond = Cond.cat([cond, model.condition(negatives).null()])
        noise = torch.stack([torch.randn(latent_shape, generator=torch.Generator().manual_seed(s)) for s in seeds])

        def eps_fn(x, t, step_index):
            scale = fuser_scale(step_index, steps, beta)
            if not use_cfg:
                out = model.denoise(x, t, cond, scale)
            else:
                out_cond, out_uncond = model.denoise(torch.cat([x, x]), torch.cat([t, t]), cond, scale).chunk(2)
                out = out_uncond + guidance_scale * (out_cond - out_uncond)
            # Guidance is linear, and so is the v -> eps map for a fixed x: it may come after.
            return model.diffusion.to_eps(x, t, out)

        sampler_obj = SAMPLERS[o["sampler"]](model.diffusion, steps=steps, eta=o["eta"])
        generator = torch.Generator().manual_seed(seeds[0])
        latents = sampler_obj.sample(eps_fn, noise.to(self.device, self.dtype), generator=generator,
                                     progress=progress)
        images = model.decode_latents(latents).float().cpu()
        return images if output_type == "pt" else [to_pil(img) for img in images]


def to_pil(image: torch.Tensor) -> Image.Image:
    array = (image.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return Image.fromarray(array)


LAYOUT_COLOURS = {"subject": (230, 40, 40), "object": (40, 90, 230), "action": (30, 170, 60)}


def draw_layout(image: Image.Image, interactions: Sequence[Interaction], min_size: int = 256) -> Image.Image:
    """A copy of `image` (upscaled to at least `min_size` for legibility) with each
    interaction's subject, object and action boxes and phrases drawn on it."""
    scale = max(1, math.ceil(min_size / min(image.size)))
    canvas = image.convert("RGB").resize((image.width * scale, image.height * scale), Image.NEAREST)
    draw = ImageDraw.Draw(canvas)
    w, h = canvas.size
    for n, it in enumerate(interactions):
        for role, box, phrase in (("subject", it.subject_box, it.subject), ("object", it.object_box, it.object),
                                  ("action", it.action_box, it.action)):
            x0, y0, x1, y1 = box[0] * w, box[1] * h, box[2] * w, box[3] * h
            colour = LAYOUT_COLOURS[role]
            draw.rectangle([x0, y0, max(x1 - 1, x0), max(y1 - 1, y0)], outline=colour, width=2)
            label = f"{n}:{phrase}"
            tx, ty = x0 + 2, y0 + 2 if role != "object" else max(y1 - 12, y0)
            draw.rectangle(draw.textbbox((tx, ty), label), fill=colour)
            draw.text((tx, ty), label, fill=(255, 255, 255))
    return canvas


__all__ = ["InteractDiffusionPipeline", "Interaction", "ConditionError", "CheckpointError", "draw_layout",
           "fuser_scale", "SAMPLERS", "SamplingOptions", "sampling_defaults", "resolve_sampling"]
