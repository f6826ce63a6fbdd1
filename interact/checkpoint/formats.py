"""Checkpoint files: reading them safely, telling their layouts apart, and splitting them into
the four sections (docs/reference.md §3).

Layouts read:
- released InteractDiffusion / GLIGEN files and this project's own: a torch dict
  with sections `model`, `autoencoder`, `text_encoder`, `diffusion` (+ `config_dict`,
  and for training files `opt`, `scheduler`, `iters`, ...);
- Stable Diffusion v1.x originals (.ckpt or .safetensors): one `state_dict` with
  prefixes `model.diffusion_model.`, `first_stage_model.`, `cond_stage_model.transformer.`;
- interaction-only files (this project's export): `model` holding only
  `position_net.*` and the fusers;
- the InteractDiffusion WebUI extension's file (`ext_interactdiff_v1.2.pth`): the same tensors
  as one flat dict, `input_blocks.1.1.transformer_blocks.0.fuser.*` ... and `position_net.*`.
- diffusers folders (unet/ vae/ text_encoder/ tokenizer/ scheduler/), read into the same sections
  by interact/checkpoint/diffusers_folder.py (each format says how it names such a folder).

Pickles load with `weights_only=True`; a file that needs arbitrary Python objects
is refused unless the caller trusts it (`allow_pickle=True`, CLI `--allow-pickle`).
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from hoi.pickles import ZIP_MAGIC, RefusedPickle, UnreadablePickle, load_torch
from interact.controls import Format, checkpoint_formats
from interact.model import SD_V1_CONFIG, SECTIONS, is_interaction_key

SD_PREFIXES = {
    "model.diffusion_model.": "model",
    "first_stage_model.": "autoencoder",
    "cond_stage_model.": "text_encoder",  # keeps `transformer.` after the prefix
}
DIFFUSION_BUFFERS = (
    "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod",
    "posterior_variance", "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2")
PICKLE_PROTOCOLS = range(2, 6)          # legacy torch.save: a bare pickle, b"\x80" + protocol byte
SAFETENSORS_MAX_HEADER = 100_000_000    # the safetensors format's own limit on its JSON header


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message says what is wrong and what to pass."""


# ----------------------------------------------------------------------------- reading

def config_globals() -> list:
    """Classes a weights-only load may rebuild besides tensors: released GLIGEN/InteractDiffusion
    files store their training config as an OmegaConf object under `config_dict`. These are
    plain data containers, so allowing them keeps `--allow-pickle` unnecessary for those files."""
    import collections
    import typing

    from omegaconf import DictConfig, ListConfig
    from omegaconf.base import ContainerMetadata, Metadata
    from omegaconf.nodes import AnyNode
    return [DictConfig, ListConfig, ContainerMetadata, Metadata, AnyNode, typing.Any, collections.defaultdict, dict,
            list, int, float, str, bool]


def sniff_format(path: Path) -> str:
    """From the first bytes: "torch-zip", "torch-pickle", "safetensors", "empty", "cut-magic" (a
    prefix of a known header: a file cut short) or "other"."""
    with open(path, "rb") as f:
        head = f.read(9)
    if not head:
        return "empty"
    if head.startswith(ZIP_MAGIC):
        return "torch-zip"
    if head[0] == 0x80 and (len(head) == 1 or head[1] in PICKLE_PROTOCOLS):
        return "torch-pickle"
    if len(head) < len(ZIP_MAGIC) and ZIP_MAGIC.startswith(head):
        return "cut-magic"
    # safetensors: an 8-byte little-endian header length, then the JSON header
    if len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") <= SAFETENSORS_MAX_HEADER:
        return "safetensors"
    return "other"


def read_file(path: str | os.PathLike, allow_pickle: bool = False) -> dict:
    """Load a .safetensors or torch file into a dict on the CPU (the format is told by the
    content, not the suffix)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    kind = sniff_format(path)
    if kind in ("empty", "cut-magic"):
        raise CheckpointError(f"{path}: {'empty file' if kind == 'empty' else 'only a few bytes'} (truncated?)")
    if kind == "other":
        with open(path, "rb") as f:
            head = f.read(8)
        raise CheckpointError(f"{path}: not a torch (zip/pickle) or safetensors file (it starts with {head!r})")
    if kind == "safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as err:
            raise CheckpointError(f"{path}: not a readable safetensors file (truncated or corrupt?): {err}") from None
    try:
        raw = load_torch(path, config_globals(), allow_pickle)
    except RefusedPickle as err:
        raise CheckpointError(f"{path}: {err}: if you trust where the file came from, pass --allow-pickle "
                              f"(allow_pickle=True)") from None
    except UnreadablePickle as err:
        raise CheckpointError(f"{path}: {err}") from None
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path}: expected a dict of sections or tensors, found {type(raw).__name__}")
    return raw


# ----------------------------------------------------------------------------- layouts

def _is_tensor_dict(value) -> bool:
    return isinstance(value, dict) and bool(value) and all(isinstance(v, torch.Tensor) for v in value.values())


LORA_SUFFIXES = (".lora_up.weight", ".lora_B.weight", ".processor.to_q_lora.up.weight")


def _lora(raw: dict) -> bool:
    return any(isinstance(k, str) and k.endswith(LORA_SUFFIXES) for k in raw)


def _sd_backbone(raw: dict) -> bool:
    """A `model` section with the backbone alone (a diffusers SD folder read into sections)."""
    model = raw.get("model")
    return _is_tensor_dict(model) and not any(is_interaction_key(k) for k in model)


def _sd_original(raw: dict) -> bool:
    state = raw.get("state_dict", raw)
    return isinstance(state, dict) and any(isinstance(k, str) and k.startswith("model.diffusion_model.") for k in state)


LORA = Format("lora", "LoRA for the base (pass it with --lora FILE[:weight])", _lora)
SD_BACKBONE = Format("sd_backbone", "Stable Diffusion v1.x backbone (UNet, autoencoder, text encoder)", _sd_backbone,
                     backbone=True, config=SD_V1_CONFIG,
                     folder_description="diffusers Stable Diffusion folder (unet/, vae/, text_encoder/, tokenizer/, "
                                        "scheduler/)")
SD_ORIGINAL = Format("sd_original", "Stable Diffusion v1.x original checkpoint", _sd_original, backbone=True,
                     config=SD_V1_CONFIG)
UNKNOWN = "unknown"


def formats() -> list[Format]:
    """The one table of formats, tried in order: LoRA files first (their names would match the
    others), then each registered control's (interact/controls/), then the backbone alone."""
    return [LORA, *checkpoint_formats(), SD_BACKBONE, SD_ORIGINAL]


def format_named(name: str) -> Format | None:
    return next((f for f in formats() if f.name == name), None)


def classify(raw: dict) -> str:
    """The name of the first format of the table that `raw` matches, or "unknown"."""
    return next((f.name for f in formats() if f.matches(raw)), UNKNOWN)


def file_format(raw: dict) -> Format | None:
    return format_named(classify(raw))


def holds_control_only(kind: str) -> bool:
    """A format with a control's weights and no backbone (an SD file must come with it)."""
    f = format_named(kind)
    return f is not None and f.control is not None and not f.backbone


def config_for_kind(kind: str) -> Path:
    """The model config a file of this format generates with when none is given."""
    f = format_named(kind)
    return f.config if f is not None and f.config is not None else SD_V1_CONFIG


def describe_kind(raw: dict) -> str:
    f = file_format(raw)
    text = f.description if f is not None else "unrecognised layout"
    if "diffusers_folder" in raw:  # read by interact/checkpoint/diffusers_folder.py
        text = (f.folder_description if f is not None and f.folder_description else None) or (
            "diffusers folder: " + text)
    if "iters" in raw:
        text += f", training checkpoint at iteration {int(raw['iters'])}"
    return text


def unknown_layout_message(raw: dict) -> str:
    return ("unrecognised checkpoint layout: expected an InteractDiffusion/GLIGEN dict with a 'model' section, "
            f"or an SD v1.x 'state_dict'; top-level keys are {sorted(map(str, raw))[:10]}")


def to_sections(raw: dict) -> dict[str, dict[str, torch.Tensor]]:
    """Split any supported layout into the four section dicts (absent sections left out)."""
    kind = classify(raw)
    if kind == "sd_original":
        state = raw.get("state_dict", raw)
        sections: dict[str, dict] = {}
        for key, value in state.items():
            if not isinstance(value, torch.Tensor):
                continue
            for prefix, section in SD_PREFIXES.items():
                if key.startswith(prefix):
                    sections.setdefault(section, {})[key[len(prefix):]] = value
                    break
            else:
                if key in DIFFUSION_BUFFERS:
                    sections.setdefault("diffusion", {})[key] = value
        return sections
    if kind == UNKNOWN:
        raise CheckpointError(unknown_layout_message(raw))
    if "model" not in raw and _is_tensor_dict(raw):   # a flat dict of the control's tensors (the WebUI file)
        return {"model": dict(raw)}
    return {s: raw[s] for s in SECTIONS if _is_tensor_dict(raw.get(s))}
