"""Assembling InteractDiffusion from a YAML config: the frozen SD v1.x parts plus
the interaction control (the interaction tokenizer + one fuser per transformer block), and the
two verbs every caller conditions and denoises with: `condition` and `denoise`.

The four sections mirror the released checkpoint layout (docs/reference.md §3): `model`
(UNet with the tokenizer, released name `position_net`, and fusers), `autoencoder`,
`text_encoder`, `diffusion`. The readable names `unet` and `interaction_tokenizer` point at
those released attributes, so the state-dict names (and strict loading) stay as released.
"""
from __future__ import annotations

import copy
import dataclasses
import importlib
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal, Mapping, Optional, Sequence

import torch
import yaml
from omegaconf import DictConfig, OmegaConf
from torch import nn

from hoi.records import Segment
from hoi.schema import check_options, option
from interact.conditions import Cond
from interact.controls import Control, ControlInput, TextEncoders, model_controls, route
from interact.controls.interactions import BOX_ATTENTION, ROLE_EMBEDDINGS
from interact.fuser import FUSER_INITS, FUSER_TYPES, attach_fusers
from interact.paths import (CONFIG_DIR, EMBEDDED_CONFIG, EMBEDDED_CKPT, REPO_ROOT, SD_V1_CONFIG,  # noqa: F401
                            SD_V1_GLIGEN_CONFIG)
from interact.sampling import SamplingOptions

SECTIONS = ("model", "autoencoder", "text_encoder", "diffusion")
REQUIRED_KEYS = SECTIONS + ("interaction", "scale_factor")


MODEL_KEYS = SECTIONS + ("interaction", "scale_factor", "sampling")   # what a model config holds
TRAINING_KEYS = ("train", "data")                                      # what a training config adds


def read_yaml(path: Path) -> DictConfig:
    """A YAML file as a config; a syntax error is a ValueError naming the file and the line."""
    try:
        config = OmegaConf.load(path)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else "?"
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ValueError(f"{path}: not valid YAML at {where}: {problem}") from None
    if not isinstance(config, DictConfig):
        raise ValueError(f"{path}: expected a mapping of sections (model:, train:, ...), got a list")
    return config


def _named_config(path: Path, key: str, name) -> Path:
    base = Path(str(name))
    base = base if base.is_file() else CONFIG_DIR / base
    if not base.is_file():
        raise FileNotFoundError(f"{path}: {key} = {name!r}: not found (nor under {CONFIG_DIR})")
    return base


def read_config_file(path) -> DictConfig:
    """A YAML file, with what it builds on merged underneath, so that a file names only what it
    changes: `model_config: <file>` (a name under configs/ or a path) gives the model sections and
    must hold nothing else (a model config that brought train or data options would hand them to
    every config built on it); `base_config: <file>` gives everything of another config, its
    train and data sections included (a variant of a training config)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path} (see {CONFIG_DIR} for the shipped configs)")
    own = read_yaml(path)
    if "model_config" in own and "base_config" in own:
        raise ValueError(f"{path}: give model_config or base_config, not both")
    own_sections = {k: v for k, v in own.items() if k not in ("model_config", "base_config")}
    if "base_config" in own:
        return OmegaConf.merge(read_config_file(_named_config(path, "base_config", own.base_config)), own_sections)
    if "model_config" not in own:
        return own
    base = _named_config(path, "model_config", own.model_config)
    model = read_config_file(base)
    extra = [k for k in model if k not in MODEL_KEYS]
    if extra:
        raise ValueError(f"{path}: model_config = {own.model_config!r} has a {extra[0]!r} section, but a model "
                         f"config holds only {', '.join(MODEL_KEYS)}; to vary a training config use base_config")
    return OmegaConf.merge(model, own_sections)


FuserType = Literal[tuple(FUSER_TYPES)]
RoleEmbedding = Literal[ROLE_EMBEDDINGS]
BoxAttention = Literal[BOX_ATTENTION]
FuserInit = Literal[FUSER_INITS]


@dataclass
class InteractionOptions:
    """The `interaction:` section of a model config: the interaction control's variant switches
    (the first three are also command-line flags) and its tokenizer."""
    fuser_type: FuserType = option("gatedSA", "the fuser in every transformer block: gated self-attention "
                                              "(the paper's) or gated cross-attention (interact/fuser.py)")
    role_embedding: RoleEmbedding = option("fixed", "role embeddings of the interaction tokens: fixed (the "
                                                    "paper's) or typed by the phrase "
                                                    "(interact/controls/interactions.py)")
    box_attention: BoxAttention = option("none", "boxes: a token is attended only from the cells its box covers")
    fuser_init: FuserInit = option("zero_gates", "zero_gates: a fresh fuser is the identity (fine-tuning); "
                                                 "zero_outputs: every weight trains from the first step", cli=False)
    fuser_positions: bool = option(False, "add position encodings to the fusers' visual tokens", cli=False)
    position_net: Optional[dict] = option(None, "the interaction tokenizer, {target, params}", cli=False)


SWITCHES = tuple(f.name for f in dataclasses.fields(InteractionOptions) if f.metadata["cli"])
# Derived from the schema (not a second source): the defaults of everything but position_net.
INTERACTION_DEFAULTS = {k: v for k, v in dataclasses.asdict(InteractionOptions()).items() if k != "position_net"}


def interaction_options(config: DictConfig) -> dict:
    """The config's interaction switches, checked, defaults filled in (what the model is built
    with); raises ValueError naming interaction.<key> for an unknown key or a value not allowed."""
    checked = check_options(InteractionOptions, config.interaction, "interaction")
    return {key: checked[key] for key in checked if key != "position_net"}


def interaction_switches() -> dict[str, tuple]:
    """The interaction variants a config (or the command line) chooses between, first = default."""
    hints = typing.get_type_hints(InteractionOptions)
    return {key: typing.get_args(hints[key]) for key in SWITCHES}


def set_interaction_options(config: DictConfig, **options) -> DictConfig:
    """Command-line overrides of the interaction switches (None = keep); returns a changed copy
    (the given config is left as it was)."""
    options = {k: v for k, v in options.items() if v is not None}
    unknown = sorted(set(options) - set(SWITCHES))
    if unknown:
        raise ValueError(f"unknown interaction option(s) {unknown}; known: {sorted(SWITCHES)}")
    if options:
        config = copy.deepcopy(config)
        for key, value in options.items():
            config.interaction[key] = value
    return check_interaction_switches(config)


def check_interaction_switches(config: DictConfig) -> DictConfig:
    interaction_options(config)
    return config


def load_config(config) -> DictConfig:
    """A path, a dict or a DictConfig -> DictConfig, checked for the required sections."""
    if isinstance(config, (str, Path)):
        config = read_config_file(config)
    elif isinstance(config, dict):
        config = OmegaConf.create(config)
    missing = [k for k in REQUIRED_KEYS if k not in config]
    if missing:
        raise ValueError(f"config is missing section(s): {', '.join(missing)}")
    return check_interaction_switches(config)


# A config names the classes it builds; only this project's modules are looked in, and only
# torch modules are built, so a config file cannot call anything else (os.system, subprocess, ...).
TARGET_PACKAGES = ("ldm.", "interact.")
# Targets that moved, as configs saved by earlier versions (training runs, checkpoints) name them.
MOVED_TARGETS = {"interact.tokenizer.HOIPositionNet": "interact.controls.interactions.HOIPositionNet",
                 "interact.tokenizer.GLIGENPositionNet": "interact.controls.phrases.GLIGENPositionNet"}


def instantiate(spec, **extra):
    """Build `target(**params, **extra)` from a {target, params} config node; the target must be
    an nn.Module class of this project (TARGET_PACKAGES)."""
    if "target" not in spec:
        raise ValueError(f"config node {OmegaConf.to_container(spec)} has no 'target'")
    target = MOVED_TARGETS.get(spec.target, spec.target)
    module_name, _, cls_name = str(target).rpartition(".")
    if not isinstance(target, str) or not (module_name + ".").startswith(TARGET_PACKAGES):
        raise ValueError(f"config target {target!r}: not a class of this project (a target lies in "
                         f"{' or '.join(p.rstrip('.') for p in TARGET_PACKAGES)})")
    try:
        cls = getattr(importlib.import_module(module_name), cls_name)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"config target {target!r} cannot be imported: {err}") from None
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise ValueError(f"config target {target!r}: not a model part (a torch module class)")
    params = OmegaConf.to_container(spec.get("params", {}), resolve=True)
    try:
        return cls(**params, **extra)
    except TypeError as err:
        raise ValueError(f"config params for {spec.target}: {err}") from None


class InteractDiffusion(nn.Module):
    """Container of the four released sections. Sampling, training and evaluation drive it with
    two verbs: `condition` (captions + interactions -> Cond) and `denoise` (x_t, t, Cond -> the
    UNet's prediction)."""

    def __init__(self, config: DictConfig, tokenizer=None):
        super().__init__()
        self.config = config
        self.model = instantiate(config.model)
        o = interaction_options(config)
        # Only non-default variants are passed on, so tokenizer targets without the options still build.
        defaults = InteractionOptions()
        extra = {k: o[k] for k in ("role_embedding", "box_attention") if o[k] != getattr(defaults, k)}
        self.model.position_net = instantiate(config.interaction.position_net, **extra)   # released names
        # Not a module attribute: the controls hold no weights of their own (the tokenizer is the UNet's).
        self.__dict__["controls"] = model_controls(self.model.position_net)
        attach_fusers(self.unet, self.interaction_tokenizer.out_dim, o["fuser_type"], o["fuser_init"],
                      o["fuser_positions"], o["box_attention"] != "none", key=self.trained_control.name)
        self.autoencoder = instantiate(config.autoencoder)
        self.text_encoder = instantiate(config.text_encoder, tokenizer=tokenizer)
        self.diffusion = instantiate(config.diffusion)
        self.scale_factor = float(config.scale_factor)
        for part in (self.autoencoder, self.text_encoder):
            part.requires_grad_(False)

    @property
    def unet(self) -> nn.Module:
        """The UNet (released section name `model`), the trained control's tokenizer and fusers inside it."""
        return self.model

    @property
    def interaction_tokenizer(self) -> nn.Module:
        """The trained control's tokenizer: its items -> the fusers' tokens (released name `position_net`)."""
        return self.model.position_net

    @property
    def trained_control(self) -> Control:
        """The control whose tokenizer and fusers this model has (interact/controls/)."""
        return next(c for c in self.controls.values() if c.trained)

    def text_encoders(self, encode_captions=None, encode_phrases=None) -> TextEncoders:
        """The text encoder's verbs for the controls; caches (interact/phrase_cache.py) plug in here."""
        encoder = self.text_encoder
        # `is None`, not `or`: a cache with nothing in it yet is falsy (it has a length)
        return TextEncoders(encoder.encode if encode_captions is None else encode_captions,
                            encoder.encode_pooled if encode_phrases is None else encode_phrases,
                            encoder.tokenize, encoder.tokenizer.eos_token_id, self.interaction_tokenizer.in_dim)

    def check_controls(self, items: Mapping[str, list], where: str, prompt: str = "",
                       image_size: tuple[int, int] | None = None) -> dict[str, list]:
        """One image's items ({control name: items}) as this model's controls take them (another
        control's items adopted, e.g. interactions as GLIGEN's phrases); ConditionError naming
        `where` for what it cannot take. With `image_size`, also what needs the tokenizer."""
        out: dict[str, list] = {}
        text = self.text_encoders() if image_size is not None else None
        for name, given in items.items():
            owner = name if name in self.controls else self.trained_control.name
            taken = self.controls[owner].take(name, list(given), where)
            out[owner] = out.get(owner, []) + taken
        return {name: self.controls[name].check(its, where, prompt, text, image_size) for name, its in out.items()}

    # -------------------------------------------------------------- the two verbs
    def condition(self, captions: Sequence[str], interactions=None,
                  encode_captions: Callable[[list[str]], torch.Tensor] | None = None,
                  encode_phrases: Callable[[list[str]], torch.Tensor] | None = None,
                  segments: Sequence[Sequence[Segment]] | None = None,
                  image_size: tuple[int, int] | None = None, replace_phrases: bool | None = None, *,
                  controls: Mapping[str, Sequence] | None = None, options=None) -> Cond:
        """What the UNet is conditioned on for one image per caption, on the UNet's device and dtype.
        `controls`: {control name: one list of items per caption, or a ready ControlInput};
        `interactions` (Interaction or GroundedPhrase items, one list per caption, or a ready
        input of the trained control) and `segments` (DenseDiffusion's) are shorthands for it.
        Items of another control are adopted where the model's control takes them. None: the
        null input. `encode_captions` ([B] captions -> [B, L, D]) and `encode_phrases` ([n]
        phrases -> [n, D]) default to the text encoder; caches plug in there. `image_size`
        (height, width): what segment masks are drawn at. `options`: SamplingOptions (the
        controls' options; defaults when None); `replace_phrases` overrides its
        dense_phrase_embeddings."""
        captions = list(captions)
        options = options or SamplingOptions()
        if replace_phrases is not None:
            options = dataclasses.replace(options, dense_phrase_embeddings=replace_phrases)
        given = self._per_control(captions, interactions, segments, controls)
        text = self.text_encoders(encode_captions, encode_phrases)
        context = text.encode(captions)
        inputs = {}
        for name, control in self.controls.items():
            batch = given.get(name)
            if isinstance(batch, ControlInput):
                inputs[name] = batch
                continue
            if batch is None:
                if not control.trained:
                    continue
                batch = [[] for _ in captions]
            context, inputs[name] = control.build(captions, batch, text, context, image_size, options)
        placed = next(self.unet.parameters())
        return Cond(context, {k: v for k, v in inputs.items() if v is not None}).to(placed.device, placed.dtype)

    def _per_control(self, captions, interactions, segments, controls) -> dict[str, object]:
        """{model control name: one list per caption (or a ready input)} from condition's arguments."""
        b = len(captions)
        lists: dict[str, list[list]] = {}

        def add(name, per_caption):
            if isinstance(per_caption, ControlInput):
                lists[name] = per_caption
                return
            per_caption = list(per_caption)
            if len(per_caption) != b:
                raise ValueError(f"{name}: {len(per_caption)} lists for {b} captions; give one list per caption")
            for i, items in enumerate(per_caption):
                owner = name if name in self.controls else self.trained_control.name
                taken = self.controls[owner].take(name, list(items), f"caption {i}")
                lists.setdefault(owner, [[] for _ in range(b)])[i] += taken
        if isinstance(interactions, ControlInput):
            add(self.trained_control.name, interactions)
            interactions = None
        for argument, given in (("interactions", interactions), ("segments", segments)):
            if given is None:
                continue
            given = list(given)
            if len(given) != b:
                raise ValueError(f"{argument}: {len(given)} lists for {b} captions; give one list per caption")
            routed = [route(items) for items in given]   # items go to their control by type
            for name in dict.fromkeys(n for r in routed for n in r):
                add(name, [r.get(name, []) for r in routed])
        for name, per_caption in (controls or {}).items():
            add(name, per_caption)
        return lists

    def denoise(self, x_t: torch.Tensor, t: torch.Tensor, cond: Cond,
                scale: float | Mapping[str, float] = 1.0) -> torch.Tensor:
        """The UNet's prediction for x_t at timesteps t (eps or v, as diffusion.parameterization
        says). Each control in `cond` turns its input into its entries of the UNet's `controls`
        mapping here (the trained control's tokenizer runs inside the denoising forward, so in
        training its gradients flow and sync with the UNet's; it is a small MLP, cheap next to
        the UNet, so sampling recomputes it at every step). `scale`: per control name, how
        strongly it acts at this step (scheduled sampling; 0 = skipped); a number applies to
        the trained control, the others at 1."""
        entries = {}
        for name, input in cond.controls.items():
            control = self.controls[name]
            s = scale.get(name, 1.0) if isinstance(scale, Mapping) else (scale if control.trained else 1.0)
            entries.update(control.entries(input, t, s))
        return self.unet(x_t, t, cond.context, entries)

    def aux_loss(self, cond: Cond, batch: dict) -> torch.Tensor | None:
        """The controls' auxiliary training losses (summed), or None when none has one."""
        losses = [loss for c in self.controls.values() if (loss := c.aux_loss(cond, batch)) is not None]
        return sum(losses) if losses else None

    @property
    def text_encoder_seeded(self) -> bool:
        """A frozen random text encoder defined by its config seed (FrozenCLIPEmbedder init_seed):
        no file holds its weights; it is rebuilt from the config."""
        return getattr(self.text_encoder, "init_seed", None) is not None

    def section(self, name: str) -> nn.Module:
        if name not in SECTIONS:
            raise KeyError(f"unknown section {name!r}; sections are {SECTIONS}")
        return getattr(self, name)

    def finish_meta_load(self) -> None:
        """After loading weights into a meta-built model: rebuild what no file holds (the noise
        schedule when a file lacks it, a seeded text encoder, the text encoder's non-persistent position ids), all pure
        functions of the config, and make sure nothing is left without storage."""
        if any(b.is_meta for b in self.diffusion.buffers()):
            with torch.device("cpu"):
                self.diffusion = instantiate(self.config.diffusion)
        if self.text_encoder_seeded and any(p.is_meta for p in self.text_encoder.parameters()):
            with torch.device("cpu"):
                self.text_encoder = instantiate(self.config.text_encoder, tokenizer=self.text_encoder.tokenizer)
        self.text_encoder.rebuild_position_ids()
        left = [n for n, t in [*self.named_parameters(), *self.named_buffers()] if t.is_meta]
        if left:
            raise RuntimeError(f"{len(left)} tensors were not loaded from any file, e.g. {left[:5]}")

    def interaction_parameters(self):
        """What InteractDiffusion trains: the interaction tokenizer and the fusers."""
        return [p for n, p in self.unet.named_parameters() if is_interaction_key(n)]

    def encode_images(self, images: torch.Tensor, generator=None) -> torch.Tensor:
        """Images in [-1, 1] -> scaled latents."""
        return self.autoencoder.encode(images).sample(generator) * self.scale_factor

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents -> images in [0, 1]. Multiplied by 1 / scale_factor, as the reference
        decodes (dividing rounds a few values differently)."""
        return ((self.autoencoder.decode(latents * (1.0 / self.scale_factor)) + 1) / 2).clamp(0, 1)


def is_interaction_key(name: str) -> bool:
    """True for the `model` section's names that belong to the interaction control (the tokenizer,
    released name `position_net`, and the fusers)."""
    return name.startswith("position_net.") or ".fuser." in name


def build_model(config=SD_V1_CONFIG, tokenizer=None, device=None) -> InteractDiffusion:
    """Build with random weights. `device="meta"` allocates nothing (for name/shape checks)."""
    config = load_config(config)
    if device is not None:
        with torch.device(device):
            return InteractDiffusion(config, tokenizer)
    return InteractDiffusion(config, tokenizer)
