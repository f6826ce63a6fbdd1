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
from typing import Callable, Literal, Optional, Sequence

import torch
import yaml
from omegaconf import DictConfig, OmegaConf
from torch import nn

from hoi.records import Interaction, Segment
from hoi.schema import check_options, option
from interact.conditions import (Cond, Grounding, PhraseGrounding, build_grounding, build_phrase_grounding,
                                 tokenizer_items)
from interact.dense import DenseControl, DenseWeights, build_dense
from interact.fuser import FUSER_INITS, FUSER_TYPES, attach_fusers
from interact.tokenizer import BOX_ATTENTION, ROLE_EMBEDDINGS, GLIGENPositionNet

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO_ROOT / "configs"
SD_V1_CONFIG = CONFIG_DIR / "sd_v1_interact.yaml"
SD_V1_GLIGEN_CONFIG = CONFIG_DIR / "sd_v1_gligen.yaml"   # the released GLIGEN box + text model
# The embedded default: the toy InteractDiffusion model and the config it was trained with.
EMBEDDED_CKPT = REPO_ROOT / "assets" / "toy_interactdiffusion.pth"
EMBEDDED_CONFIG = CONFIG_DIR / "toy_hoi.yaml"
SECTIONS = ("model", "autoencoder", "text_encoder", "diffusion")
REQUIRED_KEYS = SECTIONS + ("interaction", "scale_factor")


MODEL_KEYS = SECTIONS + ("interaction", "scale_factor", "sampling")
TRAINING_KEYS = ("train", "data")


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
                                                    "paper's) or typed by the phrase (interact/tokenizer.py)")
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


def instantiate(spec, **extra):
    """Build `target(**params, **extra)` from a {target, params} config node; the target must be
    an nn.Module class of this project (TARGET_PACKAGES)."""
    if "target" not in spec:
        raise ValueError(f"config node {OmegaConf.to_container(spec)} has no 'target'")
    target = spec.target
    module_name, _, cls_name = str(target).rpartition(".")
    if not isinstance(target, str) or not module_name.startswith(TARGET_PACKAGES):
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
        attach_fusers(self.unet, self.interaction_tokenizer.out_dim, o["fuser_type"], o["fuser_init"],
                      o["fuser_positions"], o["box_attention"] != "none")
        self.autoencoder = instantiate(config.autoencoder)
        self.text_encoder = instantiate(config.text_encoder, tokenizer=tokenizer)
        self.diffusion = instantiate(config.diffusion)
        self.scale_factor = float(config.scale_factor)
        for part in (self.autoencoder, self.text_encoder):
            part.requires_grad_(False)

    @property
    def unet(self) -> nn.Module:
        """The UNet (released section name `model`), the interaction tokenizer and fusers inside it."""
        return self.model

    @property
    def is_gligen(self) -> bool:
        """A GLIGEN model: phrases with boxes, no interactions (interact/tokenizer.py GLIGENPositionNet)."""
        return isinstance(self.interaction_tokenizer, GLIGENPositionNet)

    def check_items(self, items, where: str) -> list:
        """One image's interactions (or a GLIGEN model's phrases) as this model's tokenizer takes
        them; ConditionError naming `where` for what it cannot take (interact.conditions.tokenizer_items)."""
        return tokenizer_items(items, self.is_gligen, self.interaction_tokenizer.max_interactions, where)

    @property
    def interaction_tokenizer(self) -> nn.Module:
        """Interaction slots -> the fusers' tokens (interact/tokenizer.py; released name `position_net`)."""
        return self.model.position_net

    # -------------------------------------------------------------- the two verbs
    def condition(self, captions: Sequence[str],
                  interactions: Sequence[Sequence[Interaction]] | Grounding | PhraseGrounding | None = None,
                  encode_captions: Callable[[list[str]], torch.Tensor] | None = None,
                  encode_phrases: Callable[[list[str]], torch.Tensor] | None = None,
                  segments: Sequence[Sequence[Segment]] | None = None,
                  image_size: tuple[int, int] | None = None, replace_phrases: bool = True) -> Cond:
        """What the UNet is conditioned on for one image per caption, on the UNet's device and dtype.
        `interactions`: one list per caption (None: none, i.e. the null grounding) or a ready
        Grounding. `encode_captions` ([B] captions -> [B, L, D]) and `encode_phrases` ([n] phrases ->
        [n, D]) default to the text encoder; caches (interact/phrase_cache.py) plug in there.
        `segments`: DenseDiffusion's, one list per caption (interact/dense.py), rasterized at
        `image_size` (height, width); `replace_phrases`: their tokens replaced by the phrase
        encoded alone (DenseDiffusion's; off keeps the prompt's own)."""
        # `is None`, not `or`: a cache with nothing in it yet is falsy (it has a length)
        encode_captions = self.text_encoder.encode if encode_captions is None else encode_captions
        encode_phrases = self.text_encoder.encode_pooled if encode_phrases is None else encode_phrases
        captions = list(captions)
        if not isinstance(interactions, (Grounding, PhraseGrounding)):
            tokenizer = self.interaction_tokenizer
            interactions = [[] for _ in captions] if interactions is None else list(interactions)
            if len(interactions) != len(captions):
                raise ValueError(f"interactions: {len(interactions)} lists for {len(captions)} captions; "
                                 f"give one list per caption")
            build = build_phrase_grounding if self.is_gligen else build_grounding
            interactions = build(interactions, encode_phrases, tokenizer.in_dim, tokenizer.max_interactions)
        context, dense = encode_captions(captions), None
        if segments is not None and any(segments):
            if image_size is None:
                raise ValueError("segments need the image_size (height, width) their masks are drawn at")
            encoder = self.text_encoder
            context, dense = build_dense(captions, segments, context, encoder.tokenize, encoder.encode,
                                         encoder.tokenizer.eos_token_id, *image_size, replace_phrases)
        placed = next(self.unet.parameters())
        return Cond(context, interactions, dense).to(placed.device, placed.dtype)

    def denoise(self, x_t: torch.Tensor, t: torch.Tensor, cond: Cond, fuser_scale: float = 1.0,
                dense_weights: DenseWeights = DenseWeights()) -> torch.Tensor:
        """The UNet's prediction for x_t at timesteps t (eps or v, as diffusion.parameterization
        says). The interaction tokenizer runs here, so the training forward covers every trained
        weight; it is a small MLP over at most 3 x 30 slots, cheap next to the UNet, so sampling
        recomputes it at every step. `fuser_scale` multiplies every fuser (scheduled sampling sets
        it per step).
        `cond.dense` (DenseDiffusion's segments) modulates the attention logits of its active rows
        with `dense_weights`. A new control's hook goes here (see Cond)."""
        tokens = self.interaction_tokenizer(**cond.grounding.as_kwargs())
        control = None
        if cond.dense is not None and cond.dense.any_active:
            control = DenseControl(cond.dense, t, dense_weights)
        return self.unet(x_t, t, cond.context, tokens, fuser_scale, control)

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
