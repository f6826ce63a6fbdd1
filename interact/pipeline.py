"""Prompt + layout -> images.

    pipe = InteractDiffusionPipeline.from_checkpoint("interact-diffusion-v1-2.pth")
    images = pipe("a person feeding a cat", interactions=[Interaction(
        subject="person", action="feeding", object="cat",
        subject_box=(0.1, 0.2, 0.5, 0.9), object_box=(0.55, 0.5, 0.9, 0.9))], seed=0)

A layout is each control's items (interact/controls/): `interactions` (Interaction, or a GLIGEN
model's GroundedPhrase), `segments` (DenseDiffusion's) or `controls={name: items}`.
Classifier-free guidance: the unconditional branch gets the negative (or empty) prompt and every
control's null input. Scheduled sampling: the fusers run for the first int(beta * steps) steps
(the noisiest), then fade linearly to 0 over int(decay * steps) steps (decay 0 by default), and
are off after (GLIGEN's alpha schedule [beta, decay, rest]); each control says how strongly it
acts at a step (Control.step_scale).

Samplers: PLMS and DDIM (ldm/models/diffusion/), and DPM-Solver++ 2M, UniPC and Euler
ancestral from diffusers' schedulers (ldm/models/diffusion/solvers.py). `reference_compat`
reproduces the reference code's images from the same weights and seed (see docs/sampling.md).
The multi-instance sampler: interact/multi_instance.py.
"""
from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import Mapping, Sequence

import torch
from PIL import Image, ImageDraw

from hoi.device import resolve_device, resolve_dtype
from hoi.pickles import RefusedPickle, UnreadablePickle, check_torch_file
from hoi.records import ConditionError, Interaction, check_text
from interact.checkpoint import CheckpointError, load_weights
from interact.conditions import Cond
from interact.controls import CONTROLS, route
from interact.model import SD_V1_CONFIG, InteractDiffusion, build_model, load_config, set_interaction_options
from interact.multi_instance import instance_branches
from interact.sampling import (REFERENCE_NEGATIVE_PROMPT, REFERENCE_STEPS, SAMPLERS,  # noqa: F401 (re-exported)
                               SamplingOptions, fuser_scale, resolve_sampling, sampling_defaults)
from ldm.models.diffusion.ddim import DDIMSampler, Merge
from ldm.models.diffusion.plms import PLMSSampler
from ldm.models.diffusion.solvers import SolverSampler, takes_karras_sigmas


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
    def _per_prompt(items, count: int, name: str) -> list[list] | None:
        """None, one list of items for every prompt, or one list per prompt -> one list per prompt."""
        if items is None:
            return None
        items = list(items)
        if not items or not isinstance(items[0], (list, tuple)):
            return [items] * count
        if len(items) != count:
            raise ValueError(f"{name}: {len(items)} lists for {count} prompts; give one list per prompt")
        return [list(i) for i in items]

    def layouts(self, prompts: list[str], interactions=None, segments=None, controls=None,
                image_size: tuple[int, int] | None = None) -> list[dict[str, list]]:
        """Each prompt's items by control, checked against this model (ConditionError naming the
        prompt). `interactions` and `segments`: items of any control, sorted to their control by
        type; `controls`: {name: items}; each as one list for every prompt or one list per prompt.
        Plain SD (an SD file alone) drops the trained controls' items: it has nothing to act on them."""
        b = len(prompts)
        out: list[dict[str, list]] = [{} for _ in range(b)]
        given = [(None, self._per_prompt(interactions, b, "interactions")),
                 (None, self._per_prompt(segments, b, "segments"))]
        given += [(name, self._per_prompt(items, b, name)) for name, items in (controls or {}).items()]
        for name, per_prompt in given:
            if per_prompt is None:
                continue
            for i, items in enumerate(per_prompt):
                routed = route(items) if name is None else {name: list(items)}
                for key, its in routed.items():
                    out[i][key] = out[i].get(key, []) + its
        if self.plain_sd:  # nothing for the layout controls to act on: their items are dropped
            out = [{k: v for k, v in layout.items() if not CONTROLS[k].trained} for layout in out]
        return [self.model.check_controls(layout, f"prompt {i}", prompts[i], image_size)
                for i, layout in enumerate(out)]

    @staticmethod
    def _prompts(prompt, negative_prompt, seed):
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if not prompts or not all(isinstance(p, str) for p in prompts):
            raise ValueError(f"prompt = {prompt!r}: must be a string or a non-empty list of strings")
        b = len(prompts)
        negative = negative_prompt if not isinstance(negative_prompt, str) else [negative_prompt] * b
        if len(negative) != b:
            raise ValueError(f"negative_prompt: {len(negative)} given for {b} prompts")
        for i, (text, negative_text) in enumerate(zip(prompts, negative)):
            check_text(text, f"prompt {i}")
            check_text(negative_text, f"negative_prompt {i}")
        seeds = [seed + i for i in range(b)] if isinstance(seed, int) else list(seed)
        if len(seeds) != b or not all(isinstance(s, int) for s in seeds):
            raise ValueError(f"seed = {seed!r}: an int, or one int per prompt")
        return prompts, list(negative), seeds

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
    def __call__(self, prompt: str | Sequence[str], interactions=None, segments=None, *, controls=None,
                 seed: int | Sequence[int] = 0, generator: torch.Generator | None = None, progress: bool = True,
                 output_type: str = "pil", **options):
        """Returns a list of PIL images (output_type "pil") or a [B,3,H,W] tensor in [0,1] ("pt").
        The layout: `interactions` (a list of Interaction, or a GLIGEN model's GroundedPhrase,
        for a single prompt or every prompt, or one list per prompt; counts may differ),
        `segments` (DenseDiffusion's, interact/controls/segments.py, in the same shapes) and
        `controls` ({control name: items}); all may be given. `options`: SamplingOptions' fields
        (unset ones from the config). Image i uses seed + i (or seed[i]), so an image does not
        depend on what else is in the batch (except with a stochastic sampler, DDIM with eta > 0
        or euler_a, whose per-step noise is drawn for the whole batch from the first seed).
        With reference_compat the images' noise comes from one generator, record after record as
        the reference script draws it (see reference_noise): `generator` carries it across calls
        (a batch run makes one); without one, a generator on this pipeline's device seeded with
        the first seed."""
        if output_type not in ("pil", "pt"):
            raise ValueError(f"output_type = {output_type!r}: must be 'pil' or 'pt'")
        o = self.resolve_options(**options)
        latent_shape = self._latent_shape(o.height, o.width)
        model = self.model
        size = (o.height, o.width)
        prompts, negatives, seeds = self._prompts(prompt, o.negative_prompt, seed)
        layouts = self.layouts(prompts, interactions, segments, controls, size)
        use_cfg = o.guidance_scale != 1.0
        sampler = make_sampler(model.diffusion, o)
        steps = sampler.steps  # the sampler's own count: the reference grid may have more steps than asked for

        def conditions(captions, per_row, negative):
            """(conditional, unconditional) Cond of these rows; the unconditional branch gets the
            negative prompt and no control (every control's null input)."""
            names = dict.fromkeys(k for layout in per_row for k in layout)
            cond = model.condition(captions, controls={k: [layout.get(k, []) for layout in per_row] for k in names},
                                   image_size=size, options=o)
            return cond, (model.condition(negative).null() if use_cfg else None)

        full = conditions(prompts, layouts, negatives)
        instance_control = model.trained_control
        branch_steps = int(o.multi_instance * steps) if instance_control.instances and not self.plain_sd else 0
        branches = instance_branches(prompts, layouts, instance_control) if branch_steps else None
        if branches is not None and len(branches) == len(prompts):
            branches = None   # no image has instances: nothing to branch
        if branches is not None:
            owner = branches.owner.tolist()
            split = conditions(branches.captions, branches.controls, [negatives[b] for b in owner])

        def scales(step_index: int) -> dict[str, float]:
            return {name: 0.0 if self.plain_sd and c.trained else c.step_scale(step_index, steps, o)
                    for name, c in model.controls.items()}

        def eps_fn(x, t, step_index):
            cond, uncond = split if branches is not None and step_index < branch_steps else full
            step_scales = scales(step_index)
            if not use_cfg:
                out = model.denoise(x, t, cond, step_scales)
            else:
                out = model.denoise(torch.cat([x, x]), torch.cat([t, t]), Cond.cat([cond, uncond]), step_scales)
                out_cond, out_uncond = out.chunk(2)
                out = out_uncond + o.guidance_scale * (out_cond - out_uncond)
            # Guidance is linear, and so is the v -> eps map for a fixed x: it may come after.
            return model.diffusion.to_eps(x, t, out)

        if o.reference_compat:
            generator = generator or torch.Generator(self.device).manual_seed(seeds[0])
            noise = reference_noise(generator, len(prompts), latent_shape, sampler)
        else:
            noise = torch.stack([torch.randn(latent_shape, generator=torch.Generator().manual_seed(s))
                                 for s in seeds])
            generator = torch.Generator().manual_seed(seeds[0])
        noise = noise.to(self.device, self.dtype)
        merge = None
        if branches is not None:   # every branch starts from its image's noise; merged once, after branch_steps
            noise = branches.expand(noise)
            merge = Merge(branch_steps, branches.mean, branches.full_rows)
        latents = sampler.sample(eps_fn, noise, generator=generator, progress=progress, merge=merge)
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


def draw_layout(image: Image.Image, layout: Mapping[str, list] | Sequence, min_size: int = 256) -> Image.Image:
    """A copy of `image` (upscaled to at least `min_size` for legibility) with the layout drawn on
    it, each control drawing its own items (interactions: subject, object and action boxes and
    phrases). `layout`: {control name: items}, or a list of items of any control."""
    scale = max(1, math.ceil(min_size / min(image.size)))
    canvas = image.convert("RGB").resize((image.width * scale, image.height * scale), Image.NEAREST)
    draw = ImageDraw.Draw(canvas)
    layout = layout if isinstance(layout, Mapping) else route(layout)
    for name, items in layout.items():
        CONTROLS[name].draw(draw, items, canvas.size, (image.height, image.width))
    return canvas


__all__ = ["InteractDiffusionPipeline", "Interaction", "ConditionError", "CheckpointError", "draw_layout",
           "fuser_scale", "SAMPLERS", "SamplingOptions", "sampling_defaults", "resolve_sampling"]
