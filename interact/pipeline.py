"""Prompt + interactions -> images.

    pipe = InteractDiffusionPipeline.from_checkpoint("interact-diffusion-v1-2.pth")
    images = pipe("a person feeding a cat", interactions=[Interaction(
        subject="person", action="feeding", object="cat",
        subject_box=(0.1, 0.2, 0.5, 0.9), object_box=(0.55, 0.5, 0.9, 0.9))], seed=0)

Classifier-free guidance: the unconditional branch gets the negative (or empty)
prompt and the null grounding (every slot masked). Scheduled sampling: the fusers
run for the first int(beta * steps) steps (the noisiest), then fade linearly to 0 over
int(decay * steps) steps (decay 0 by default), and are off after (GLIGEN's alpha
schedule [beta, decay, rest]).

Samplers: PLMS and DDIM (ldm/models/diffusion/), and DPM-Solver++ 2M, UniPC and Euler
ancestral from diffusers' schedulers (ldm/models/diffusion/solvers.py). `reference_compat`
reproduces the reference code's images from the same weights and seed (see REFERENCE below
and the README's "Reference-exact sampling").
"""
from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Sequence

import torch
from PIL import Image, ImageDraw

from omegaconf import OmegaConf

from hoi.device import resolve_device, resolve_dtype
from hoi.pickles import RefusedPickle, UnreadablePickle, check_torch_file
from hoi.schema import check_options, option
from interact.checkpoint import CheckpointError, load_weights
from interact.conditions import Cond
from interact.dense import DenseWeights
from interact.multi_instance import instance_branches
from hoi.records import ConditionError, GroundedPhrase, Interaction, Segment, check_text
from interact.model import (SD_V1_CONFIG, InteractDiffusion, build_model, load_config,
                            set_interaction_options)
from ldm.models.diffusion.ddim import DDIMSampler
from ldm.models.diffusion.plms import PLMSSampler
from ldm.models.diffusion.solvers import SOLVERS, SolverSampler, takes_karras_sigmas

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
    multi_instance: float = option(0.0, "multi-instance sampler: for the first int(M*steps) steps each interaction "
                                        "also runs alone (its own caption and grounding) and the branches are "
                                        "averaged (InstanceDiffusion's; 0.36 as there; 0 = off)",
                                   check=lambda v: 0 <= v <= 1, rule="in [0, 1]")
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


def make_sampler(schedule, options: SamplingOptions):
    """The sampler object for these (checked) options; raises ValueError naming the option."""
    grid = "reference" if options.reference_compat else "uniform"
    if options.sampler == "plms":
        return PLMSSampler(schedule, steps=options.steps, eta=options.eta, grid=grid)
    if options.sampler == "ddim":
        return DDIMSampler(schedule, steps=options.steps, eta=options.eta, grid=grid)
    return SolverSampler(schedule, steps=options.steps, kind=options.sampler, karras_sigmas=options.karras_sigmas)


def reference_noise(generator: torch.Generator, count: int, latent_shape, sampler) -> torch.Tensor:
    """The starting noise of `count` images as the reference script draws it from its one global
    generator: per record (batch size 1) the noise, then one draw of the same shape for every
    DDIM update the sampler makes (its DDIM step draws noise even at eta 0, which is multiplied by
    0): PLMS makes steps + 1 updates (its first step is a Heun step), DDIM steps. The draws are
    made on the generator's device, as the reference draws on its model's device."""
    updates = sampler.steps + (1 if isinstance(sampler, PLMSSampler) else 0)
    shape, device = (1, *latent_shape), generator.device
    noise = []
    for _ in range(count):
        noise.append(torch.randn(shape, generator=generator, device=device))
        for _ in range(updates):
            torch.randn(shape, generator=generator, device=device)
    return torch.cat(noise)


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


def check_text_encoder_folder(folder: Path) -> None:
    """A --text_encoder folder before transformers reads it: a folder, and torch weights (.bin)
    that hold tensors only (transformers would refuse others with torch's own advice)."""
    if not folder.is_dir():
        raise FileNotFoundError(f"--text_encoder {folder}: is a file; give a Hugging Face CLIP text model folder "
                                f"(config.json + model.safetensors or pytorch_model.bin)")
    for root in (folder, folder / "text_encoder"):
        for weights in sorted(root.glob("*.bin")) if root.is_dir() else []:
            try:
                check_torch_file(weights)
            except (RefusedPickle, UnreadablePickle) as err:
                raise CheckpointError(f"--text_encoder {folder}: {weights}: {err}") from None


def _merge_loras(model: InteractDiffusion, lora, source: str, allow_pickle: bool = False) -> str:
    """Merge `lora` (LoraSpecs, or FILE[:weight] strings) into the model's weights; returns
    `source` with the LoRA files named."""
    from interact.checkpoint.lora import apply_loras, parse_lora
    specs = [parse_lora(x, must_exist=True) if isinstance(x, (str, os.PathLike)) else x for x in lora or []]
    apply_loras(model, specs, allow_pickle)
    return " + ".join([source] + [f"LoRA {s.path}:{s.weight:g}" for s in specs])


class InteractDiffusionPipeline:
    def __init__(self, model: InteractDiffusion, device=None, dtype: torch.dtype = torch.float32,
                 source: str = "random weights"):
        self.device = resolve_device(device) if not isinstance(device, torch.device) else device
        self.dtype = dtype
        self.model = model.to(self.device, dtype).eval()
        self.source = source
        self.sampling_defaults = sampling_defaults(model.config)
        self.plain_sd = False  # True: Stable Diffusion alone, layouts ignored (the paper's SD row)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_config(cls, config=SD_V1_CONFIG, seed: int = 0, tokenizer_path=None, device=None, half=False,
                    interaction: dict | None = None, lora=None):
        """Random weights (tests and timing). `interaction`: overrides of the config's
        interaction switches ({"fuser_type": ..., "role_embedding": ...}; None values keep it);
        `lora` as in from_checkpoint."""
        from ldm.modules.encoders.clip_tokenizer import load_clip_tokenizer
        torch.manual_seed(seed)
        config = set_interaction_options(load_config(config), **(interaction or {}))
        model = build_model(config, tokenizer=load_clip_tokenizer(tokenizer_path))
        device = resolve_device(device)
        source = _merge_loras(model, lora, f"random weights (seed {seed})")
        return cls(model, device, resolve_dtype(device, half), source=source)

    @classmethod
    def from_checkpoint(cls, ckpt=None, sd_ckpt=None, config=None, text_encoder=None, device=None, half=False,
                        allow_pickle=False, interaction: dict | None = None, lora=None):
        """`ckpt`: an InteractDiffusion file, or a GLIGEN one (then, without `config`, the model is
        GLIGEN's, configs/sd_v1_gligen.yaml); with `sd_ckpt` (an SD v1.x .ckpt/.safetensors) the
        backbone comes from there and only the interaction weights from `ckpt`. `text_encoder`:
        a Hugging Face CLIP text model folder, for files without text encoder weights. `ckpt` and
        `sd_ckpt` may be diffusers folders. `lora`: LoraSpecs (or FILE[:weight] strings) merged into
        the UNet and text encoder after loading. Nothing is downloaded."""
        from ldm.modules.encoders.clip_tokenizer import load_clip_tokenizer
        from ldm.modules.encoders.modules import FrozenCLIPEmbedder
        for label, path in (("--ckpt", ckpt), ("--sd_ckpt", sd_ckpt), ("--text_encoder", text_encoder)):
            if path is not None and not Path(path).exists():
                raise FileNotFoundError(f"{label} {path}: no such file or folder")
        if text_encoder is not None:
            check_text_encoder_folder(Path(text_encoder))
        if config is None:  # a GLIGEN file gets GLIGEN's config
            from interact.checkpoint.diffusers_folder import generation_config
            config = generation_config(ckpt, allow_pickle)
        config = set_interaction_options(load_config(config), **(interaction or {}))
        device = resolve_device(device)
        # Built on the meta device: every tensor then comes from the files without a
        # random initialisation first (SD v1.x: ~25 s and 4 GB saved).
        if text_encoder is not None:
            encoder = FrozenCLIPEmbedder.from_pretrained_folder(text_encoder)
            model = build_model(config, tokenizer=encoder.tokenizer, device="meta")
            model.text_encoder = encoder
        else:
            from interact.checkpoint.diffusers_folder import tokenizer_folder
            model = build_model(config, tokenizer=load_clip_tokenizer(tokenizer_folder(ckpt, sd_ckpt)), device="meta")
        load_weights(model, ckpt, sd_ckpt, purpose="generate", allow_pickle=allow_pickle,
                     text_encoder_given=text_encoder is not None)
        source = _merge_loras(model, lora, " + ".join(str(p) for p in (sd_ckpt, ckpt) if p is not None), allow_pickle)
        pipe = cls(model, device, resolve_dtype(device, half), source=source)
        pipe.plain_sd = ckpt is None  # an SD file alone: no interaction control (see load_weights)
        return pipe

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
        if options.sampler != "ddim" and options.eta != 0:
            raise ValueError(f"eta = {options.eta!r}: only sampler 'ddim' takes eta (sampler {options.sampler!r})")
        if options.karras_sigmas and (options.sampler in ("plms", "ddim") or not takes_karras_sigmas(options.sampler)):
            raise ValueError(f"karras_sigmas = True: sampler {options.sampler!r} does not take Karras sigmas "
                             f"(dpmpp_2m and unipc do)")
        if options.scheduled_sampling + options.scheduled_decay > 1 + 1e-9:
            raise ValueError(f"scheduled_decay = {options.scheduled_decay!r}: scheduled_sampling + scheduled_decay "
                             f"= {options.scheduled_sampling + options.scheduled_decay:g} exceeds 1")
        if options.reference_compat:
            if options.sampler not in REFERENCE_STEPS:
                raise ValueError(f"sampler = {options.sampler!r}: reference_compat reproduces the reference code, "
                                 f"which samples with {' or '.join(REFERENCE_STEPS)} only")
            make_sampler(self.model.diffusion, options)  # the reference grid may be impossible for these steps
        self._latent_shape(options.height, options.width)

    @staticmethod
    def _per_prompt(items, count: int, kind: type | tuple[type, ...], name: str):
        """None, one list of `kind` for every prompt, or one list per prompt -> one list per prompt (or None)."""
        if items is None:
            return None
        items = list(items)
        if not items or isinstance(items[0], kind):
            return [items] * count
        if len(items) != count:
            raise ValueError(f"{name}: {len(items)} lists for {count} prompts; give one list per prompt")
        return [list(i) for i in items]

    @staticmethod
    def _batch(prompt, interactions, negative_prompt, seed, check_items):
        """The call's arguments as per-prompt lists, checked (`check_items`: the model's)."""
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if not prompts or not all(isinstance(p, str) for p in prompts):
            raise ValueError(f"prompt = {prompt!r}: must be a string or a non-empty list of strings")
        b = len(prompts)
        interactions = (InteractDiffusionPipeline._per_prompt(interactions, b, (Interaction, GroundedPhrase),
                                                              "interactions") or [[] for _ in range(b)])
        for i, items in enumerate(interactions):
            check_items(items, f"prompt {i}")
        negative = negative_prompt if not isinstance(negative_prompt, str) else [negative_prompt] * b
        if len(negative) != b:
            raise ValueError(f"negative_prompt: {len(negative)} given for {b} prompts")
        for i, (text, negative_text) in enumerate(zip(prompts, negative)):
            check_text(text, f"prompt {i}")
            check_text(negative_text, f"negative_prompt {i}")
        seeds = [seed + i for i in range(b)] if isinstance(seed, int) else list(seed)
        if len(seeds) != b or not all(isinstance(s, int) for s in seeds):
            raise ValueError(f"seed = {seed!r}: an int, or one int per prompt")
        return prompts, interactions, list(negative), seeds

    # ------------------------------------------------------------------ generation
    def resolve_options(self, **given) -> SamplingOptions:
        """SamplingOptions' fields as keywords; unset (None) ones from the config's `sampling`
        section, then SamplingOptions' defaults; checked against the schema and this model.
        Raises ValueError naming the option."""
        unknown = set(given) - {f.name for f in dataclasses.fields(SamplingOptions)}
        if unknown:
            raise TypeError(f"unknown sampling option(s) {sorted(unknown)}")
        options = resolve_sampling(self.sampling_defaults, **given)
        self._check_options(options)
        return options

    def check_call_options(self, **options) -> dict:
        """resolve_options as keyword arguments of __call__ (in SamplingOptions' field order)."""
        return dataclasses.asdict(self.resolve_options(**options))

    @torch.no_grad()
    def __call__(self, prompt: str | Sequence[str], interactions=None, segments=None, negative_prompt=None,
                 guidance_scale=None, steps=None, sampler=None, scheduled_sampling=None, height=None,
                 width=None, seed: int | Sequence[int] = 0, eta: float | None = None, scheduled_decay=None,
                 karras_sigmas=None, multi_instance=None, dense_steps=None, dense_self_weight=None,
                 dense_cross_weight=None, dense_phrase_embeddings=None, reference_compat=None,
                 generator: torch.Generator | None = None,
                 progress: bool = True, output_type: str = "pil"):
        """Returns a list of PIL images (output_type "pil") or a [B,3,H,W] tensor in [0,1] ("pt").
        `interactions`: a list of Interaction for a single prompt (or for every prompt), or one
        list per prompt (counts may differ). `segments`: DenseDiffusion's (interact/dense.py), in
        the same shapes as `interactions`; both may be given. Image i uses seed + i (or seed[i]), so an image does
        not depend on what else is in the batch (except with a stochastic sampler, DDIM with
        eta > 0 or euler_a, whose per-step noise is drawn for the whole batch from the first
        seed). Unset options come from the config.
        With reference_compat the images' noise comes from one generator, record after record as
        the reference script draws it (see reference_noise): `generator` carries it across calls
        (a batch run makes one); without one, a generator on this pipeline's device seeded with
        the first seed."""
        if output_type not in ("pil", "pt"):
            raise ValueError(f"output_type = {output_type!r}: must be 'pil' or 'pt'")
        o = self.resolve_options(guidance_scale=guidance_scale, steps=steps, sampler=sampler,
                                 scheduled_sampling=scheduled_sampling, negative_prompt=negative_prompt,
                                 height=height, width=width, eta=eta, scheduled_decay=scheduled_decay,
                                 karras_sigmas=karras_sigmas, multi_instance=multi_instance,
                                 dense_steps=dense_steps, dense_self_weight=dense_self_weight,
                                 dense_cross_weight=dense_cross_weight,
                                 dense_phrase_embeddings=dense_phrase_embeddings, reference_compat=reference_compat)
        latent_shape = self._latent_shape(o.height, o.width)
        model = self.model
        prompts, batch, negatives, seeds = self._batch(prompt, interactions, o.negative_prompt, seed,
                                                       model.check_items)
        if self.plain_sd:  # the layouts have nothing to act on: prompts alone, fusers skipped
            batch = [[] for _ in prompts]
        per_prompt_segments = self._per_prompt(segments, len(prompts), Segment, "segments")
        use_cfg = o.guidance_scale != 1.0
        size = (o.height, o.width)
        # The unconditional branch of guidance: the negative prompt, no controls.
        uncond = model.condition(negatives).null() if use_cfg else None
        replace = o.dense_phrase_embeddings
        full = model.condition(prompts, batch, segments=per_prompt_segments, image_size=size, replace_phrases=replace)
        sampler_obj = make_sampler(model.diffusion, o)
        steps = sampler_obj.steps  # the sampler's own count: the reference grid may have more steps than asked for
        fuser_scales = [0.0 if self.plain_sd else fuser_scale(i, steps, o.scheduled_sampling, o.scheduled_decay)
                        for i in range(steps)]
        branch_steps = int(o.multi_instance * steps)
        branches = instance_branches(prompts, batch, per_prompt_segments) if branch_steps else None
        branch_cond = (model.condition(branches.captions, branches.interactions, segments=branches.segments,
                                       image_size=size, replace_phrases=replace) if branches else None)
        # DenseDiffusion's modulation runs for its share of the steps; the replaced phrase
        # embeddings stay in the context throughout.
        dense_steps = int(o.dense_steps * steps)
        dense_weights = DenseWeights(o.dense_self_weight, o.dense_cross_weight)

        def guided(x, t, cond, scale, mix=None, dense=True):
            """The guided prediction for x [B] under `cond` (its rows, then B unconditional rows
            with guidance); `mix` maps cond's conditional rows to x's (the instance branches)."""
            x_cond, t_cond = (x, t) if mix is None else (mix.expand(x), mix.expand(t))
            if not dense:
                cond = dataclasses.replace(cond, dense=None)
            if not use_cfg:
                out = model.denoise(x_cond, t_cond, cond, scale, dense_weights)
                return out if mix is None else mix.mean(out)
            out = model.denoise(torch.cat([x_cond, x]), torch.cat([t_cond, t]), Cond.cat([cond, uncond]), scale,
                                dense_weights)
            out_cond, out_uncond = out[:len(x_cond)], out[len(x_cond):]
            if mix is not None:
                out_cond = mix.mean(out_cond)  # guidance is linear: averaging before it is the same
            return out_uncond + o.guidance_scale * (out_cond - out_uncond)

        def eps_fn(x, t, step_index):
            scale, dense = fuser_scales[step_index], step_index < dense_steps
            if step_index < branch_steps:
                out = guided(x, t, branch_cond, scale, branches, dense)
            else:
                out = guided(x, t, full, scale, dense=dense)
            # Guidance is linear, and so is the v -> eps map for a fixed x: it may come after.
            return model.diffusion.to_eps(x, t, out)

        if o.reference_compat:
            generator = generator or torch.Generator(self.device).manual_seed(seeds[0])
            noise = reference_noise(generator, len(prompts), latent_shape, sampler_obj)
        else:
            noise = torch.stack([torch.randn(latent_shape, generator=torch.Generator().manual_seed(s))
                                 for s in seeds])
            generator = torch.Generator().manual_seed(seeds[0])
        latents = sampler_obj.sample(eps_fn, noise.to(self.device, self.dtype), generator=generator,
                                     progress=progress)
        images = model.decode_latents(latents).float().cpu()
        if output_type == "pt":
            return images
        return [to_pil(img, truncate=o.reference_compat) for img in images]


def to_pil(image: torch.Tensor, truncate: bool = False) -> Image.Image:
    """[3,H,W] in [0,1] -> RGB. Rounded to the nearest level; `truncate`: floored, as the
    reference script's uint8 cast does."""
    scaled = image.clamp(0, 1) * 255
    array = (scaled.floor() if truncate else scaled.round()).to(torch.uint8).permute(1, 2, 0).numpy()
    return Image.fromarray(array)


LAYOUT_COLOURS = {"subject": (230, 40, 40), "object": (40, 90, 230), "action": (30, 170, 60)}


def draw_layout(image: Image.Image, interactions: Sequence[Interaction], min_size: int = 256) -> Image.Image:
    """A copy of `image` (upscaled to at least `min_size` for legibility) with each
    interaction's subject, object and action boxes and phrases drawn on it (a GLIGEN phrase's box
    in the subject colour)."""
    scale = max(1, math.ceil(min_size / min(image.size)))
    canvas = image.convert("RGB").resize((image.width * scale, image.height * scale), Image.NEAREST)
    draw = ImageDraw.Draw(canvas)
    w, h = canvas.size
    for n, it in enumerate(interactions):
        roles = ((("subject", it.box, it.phrase),) if isinstance(it, GroundedPhrase) else
                 (("subject", it.subject_box, it.subject), ("object", it.object_box, it.object),
                  ("action", it.action_box, it.action)))
        for role, box, phrase in roles:
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
