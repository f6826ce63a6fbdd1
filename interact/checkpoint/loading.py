"""Filling a model from checkpoint files, for generation or to start training.

One loader for both purposes: the same reading, layout and shape checks, every one done before
any tensor is loaded (a refused file leaves the model as it was). What differs is policy:

| purpose  | --ckpt            | GLIGEN --ckpt                  | backbone              | SD file flag          |
|----------|-------------------|--------------------------------|-----------------------|-----------------------|
| generate | required, or none for plain SD | loads into a GLIGEN config | required from a file | --sd_ckpt |
| train    | optional (random) | converted; new parts random    | random when no file   | --official_ckpt_name  |

Generation builds its model on the meta device, so afterwards what no file holds is rebuilt
from the config (InteractDiffusion.finish_meta_load); training builds a random model first.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch

from interact.checkpoint.checks import (NO_CONFIG_FITS, Ignore, keep_all, adapt_to_model, check_variant,
                                        compare_normalized, config_hint, normalize_section)
from interact.checkpoint.formats import (UNKNOWN, CheckpointError, classify, describe_kind, format_named, read_file,
                                         to_sections, unknown_layout_message)
from interact.controls import CONTROLS
from interact.model import REPO_ROOT, SECTIONS, InteractDiffusion, is_interaction_key

Purpose = Literal["generate", "train"]
PathLike = str | os.PathLike


@dataclass(frozen=True)
class _Policy:
    needs_ckpt: bool        # generation has no random weights to fall back on
    needs_backbone: bool
    converts: bool          # another control's file may start this one (GLIGEN's for InteractDiffusion's): training
    sd_flag: str            # the command-line flag that takes an SD v1.x file
    ckpt_takes: str         # what --ckpt takes, for messages
    finish_meta: bool       # the model was built on the meta device
    config_use: str         # how the user names another model config, for messages


POLICIES: dict[str, _Policy] = {
    "generate": _Policy(needs_ckpt=True, needs_backbone=True, converts=False, sd_flag="--sd_ckpt",
                        ckpt_takes="the InteractDiffusion file", finish_meta=True, config_use="pass --config"),
    "train": _Policy(needs_ckpt=False, needs_backbone=False, converts=True, sd_flag="--official_ckpt_name",
                     ckpt_takes="a GLIGEN or InteractDiffusion file", finish_meta=False,
                     config_use="set the training YAML's model_config: to"),
}


class WeightSources(NamedTuple):
    """Where each part came from (one line per part), and whether the backbone came from a file."""
    lines: list[str]
    backbone_from_file: bool


@dataclass
class _Part:
    """One section (or part of one) to load: the checked state, and the names it leaves alone."""
    module: torch.nn.Module
    section: str
    state: dict
    ignore: Ignore
    source: PathLike
    raw: dict  # the whole file, to say which config it fits when it does not fit this one


def read_weights(path: PathLike, model: InteractDiffusion, allow_pickle: bool = False) -> dict:
    """A checkpoint file (read_file), or a diffusers folder read into sections with the name maps
    of `model`'s config (interact/checkpoint/diffusers_folder.py)."""
    if os.path.isdir(path):
        from interact.checkpoint.diffusers_folder import read_folder
        return read_folder(path, model)
    return read_file(path, allow_pickle)


def _checked(part: _Part, policy: _Policy) -> _Part:
    state = normalize_section(part.module, part.section, part.state)
    report = compare_normalized(part.module, state, part.ignore)
    if not report.ok:
        detail = "\n  ".join(report.lines(part.section))
        inspect = f"`python -m interact.checkpoint inspect {part.source}` lists every difference"
        hint = config_hint(part.raw, policy.config_use)
        advice = (f"write a model config of the file's size ({policy.config_use} it); {inspect}"
                  if hint == NO_CONFIG_FITS else inspect)
        raise CheckpointError(f"{part.source}: does not match the model config{hint}:\n  {detail}\n({advice})")
    return _Part(part.module, part.section, {k: v for k, v in state.items() if not part.ignore(k)}, part.ignore,
                 part.source, part.raw)


def _load(part: _Part) -> None:
    # A meta-built module has no storage: take the file's tensors themselves (no copy, no init);
    # InteractDiffusion.finish_meta_load rebuilds what no file holds.
    on_meta = any(t.is_meta for t in part.module.state_dict().values())
    missing, unexpected = part.module.load_state_dict(part.state, strict=False, assign=on_meta)
    assert not unexpected and all(part.ignore(k) for k in missing), (missing, unexpected)


def _backbone_parts(model: InteractDiffusion, backbone: dict, source: PathLike, raw: dict, text_encoder_given: bool,
                    hint: str, policy: _Policy) -> list[_Part]:
    """The frozen parts (UNet without the interaction control, autoencoder, text encoder, and the
    schedule when the file has it), checked. A parameter-free first stage needs no section."""
    parts = []
    if "model" in backbone:  # shapes first: a file for another config lacks sections for that reason
        parts.append(_checked(_Part(model.unet, "model", backbone["model"], is_interaction_key, source, raw), policy))
    needed = ["model"] + (["autoencoder"] if model.autoencoder.state_dict() else [])
    missing = [name for name in needed if name not in backbone]
    if missing:
        raise CheckpointError(f"{source}: has no {missing[0]!r} section" + (f"; {hint}" if hint else ""))
    if "text_encoder" not in backbone and not text_encoder_given and not model.text_encoder_seeded:
        raise CheckpointError(f"{source}: has no text encoder weights: pass --text_encoder DIR (a Hugging "
                              f"Face CLIP ViT-L/14 text model folder, e.g. an SD v1.x repo's text_encoder/)")
    for name in SECTIONS:
        if name != "model" and name in backbone and not (name == "text_encoder" and text_encoder_given):
            parts.append(_checked(_Part(model.section(name), name, backbone[name], keep_all, source, raw), policy))
    return parts


def _other_control_message(ckpt, fmt, control, convertible: bool) -> str:
    """A file of another control than the config's: which config generates it, and whether it
    can start this control's training."""
    kind = CONTROLS[fmt.control].title
    article = "an" if kind[:1].lower() in "aeiou" else "a"
    config = fmt.config.relative_to(REPO_ROOT) if fmt.config.is_relative_to(REPO_ROOT) else fmt.config
    text = (f"--ckpt {ckpt}: is {article} {kind} checkpoint, and the config is {control.title}'s: generate with "
            f"{config} (picked by itself when no --config is given)")
    return text + (f"; {kind} files initialise {control.title} training" if convertible else "")


def load_weights(model: InteractDiffusion, ckpt: PathLike | None = None, sd_ckpt: PathLike | None = None, *,
                 purpose: Purpose, allow_pickle: bool = False, text_encoder_given: bool = False) -> WeightSources:
    """Fill `model` from files. `ckpt`: an InteractDiffusion file (full, or interaction weights
    only), or for training also a GLIGEN file (converted as docs/reference.md §3; the instance
    and role embeddings, which GLIGEN lacks, keep their initialisation). `sd_ckpt`: an SD v1.x
    .ckpt/.safetensors giving the backbone; without it a full `ckpt` gives the backbone. Names and
    shapes are strict. `text_encoder_given`: the caller loaded the text encoder from a folder,
    so the file's is skipped. `allow_pickle`: unpickle arbitrary objects (trusted files only)."""
    if purpose not in POLICIES:
        raise ValueError(f"purpose = {purpose!r}: must be one of {', '.join(POLICIES)}")
    policy = POLICIES[purpose]
    if ckpt is None and sd_ckpt is None and policy.needs_ckpt:
        raise CheckpointError("no weights given: pass --ckpt (an InteractDiffusion checkpoint) and optionally "
                              "--sd_ckpt (an SD v1.x .ckpt/.safetensors for the backbone)")
    plain_sd = ckpt is None and policy.needs_ckpt  # generation from an SD file alone: the paper's SD row
    lines: list[str] = []
    parts: list[_Part] = []
    backbone = None
    interaction = None  # (source, raw, model section under this model's names, names that start fresh)
    if ckpt is not None:
        raw = read_weights(ckpt, model, allow_pickle)
        kind = classify(raw)
        if kind == UNKNOWN:
            raise CheckpointError(f"--ckpt {ckpt}: {unknown_layout_message(raw)}")
        fmt = format_named(kind)
        if fmt.control is None:
            raise CheckpointError(f"--ckpt {ckpt}: holds no interaction weights ({describe_kind(raw)}): pass it "
                                  f"as {policy.sd_flag}, and {policy.ckpt_takes} as --ckpt")
        control = model.trained_control
        adapt = adapt_to_model(model, kind)
        if fmt.control != control.name and (adapt is None or not policy.converts):
            raise CheckpointError(_other_control_message(ckpt, fmt, control, adapt is not None))
        sections = to_sections(raw)
        if "model" not in sections:
            raise CheckpointError(f"--ckpt {ckpt}: has no 'model' section with interaction weights")
        convert, fresh = adapt
        interaction = (ckpt, raw, convert(sections["model"]), fresh)
        lines.append(f"interaction control: {ckpt} ({describe_kind(raw)})" + (
            f"; what {CONTROLS[fmt.control].title} files lack starts at random" if fmt.control != control.name else ""))
        if fmt.backbone:
            backbone = (ckpt, raw, sections)
    elif plain_sd:
        lines.append("interaction control: none (plain Stable Diffusion: every fuser's gate is 0)")
    else:
        lines.append("interaction control: random initialisation")
    if sd_ckpt is not None:
        sd_raw = read_weights(sd_ckpt, model, allow_pickle)
        sd_format = format_named(classify(sd_raw))
        if plain_sd and sd_format is not None and sd_format.control is not None:
            # Alone, an SD file generates plain SD: a file with a layout control would have it ignored.
            raise CheckpointError(f"{policy.sd_flag} {sd_ckpt}: holds a layout control ({describe_kind(sd_raw)}): "
                                  f"pass it as --ckpt (a {policy.sd_flag} file alone generates plain Stable "
                                  f"Diffusion, layouts ignored)")
        backbone = (sd_ckpt, sd_raw, to_sections(sd_raw))

    if backbone is None:
        if policy.needs_backbone:
            raise CheckpointError(f"--ckpt {ckpt}: holds the interaction weights only: pass {policy.sd_flag} with "
                                  f"an SD v1.x checkpoint for the backbone")
        lines.append("backbone (UNet, autoencoder, text encoder): random initialisation")
    else:
        source, raw, sections = backbone
        hint = "" if source == sd_ckpt else f"pass {policy.sd_flag} with an SD v1.x checkpoint for the backbone"
        parts += _backbone_parts(model, sections, source, raw, text_encoder_given, hint, policy)
        lines.append(f"backbone: {source}")
    if interaction is not None:
        source, raw, model_state, fresh = interaction
        check_variant(model, {k: v for k, v in model_state.items() if is_interaction_key(k) and not fresh(k)},
                      source, raw.get("config_dict"))
        parts.append(_checked(_Part(model.unet, "model", model.trained_control.complete_state(model_state),
                                    lambda k: not is_interaction_key(k) or fresh(k), source, raw), policy))

    for part in parts:  # every check passed: now load
        _load(part)
    if plain_sd:  # zero gates: each fuser adds exactly nothing, so the model is the SD file's
        zeros = {k: torch.zeros(v.shape, dtype=v.dtype) for k, v in model.unet.state_dict().items()
                 if is_interaction_key(k)}
        model.unet.load_state_dict(zeros, strict=False, assign=any(v.is_meta for v in model.unet.state_dict().values()))
    if policy.finish_meta:
        model.finish_meta_load()
    return WeightSources(lines, backbone is not None)
