"""Diffusers folders, both ways: reading an SD v1.x, InteractDiffusion or GLIGEN model saved in
diffusers' layout, and writing a model of this project as such a folder (docs/reference.md §3):

    unet/config.json + diffusion_pytorch_model[.fp16].safetensors (or .bin)   diffusers' block names;
        with the interaction control, each fuser inside its transformer block
        (`down_blocks.0.attentions.0.transformer_blocks.0.fuser.*`, diffusers' GatedSelfAttentionDense
        names, attention_type "gated") and the tokenizer as `position_net.*` under its original
        sub-names (linears, linear_action, null_*_feature, interaction_embedding, position_embedding)
    vae/config.json + diffusion_pytorch_model[.fp16].safetensors
    text_encoder/config.json + model[.fp16].safetensors        a transformers CLIPTextModel
    tokenizer/                                                 CLIP tokenizer files (vocab.json, merges.txt)
    scheduler/scheduler_config.json                            the noise schedule

The name maps below are this project's own, one function per direction, from tensor names alone;
tests check them against diffusers' converter for SD originals and numerically against diffusers'
UNet2DConditionModel and AutoencoderKL.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import torch
from omegaconf import OmegaConf
from safetensors import SafetensorError

from hoi.io import remove_stale_temporaries, temporary_path, writable_parent
from hoi.pickles import load_torch
from interact.checkpoint.formats import (CheckpointError, classify, config_for_kind, config_globals, read_file,
                                         sniff_format)
from interact.model import SD_V1_CONFIG, InteractDiffusion, is_interaction_key

WEIGHT_FILES = {"unet": "diffusion_pytorch_model", "vae": "diffusion_pytorch_model", "text_encoder": "model"}
CONFIG_FILE = "interactdiffusion_config.yaml"   # this project's model config, written by an export
NEEDED = ("unet", "text_encoder")   # and vae/ for a model whose first stage has weights
FOLDER_MARK = "diffusers_folder"    # in a read folder's dict: where it came from (describe_kind says so)


# ----------------------------------------------------------------------------- the name maps
#
# Our own maps, written from the two layouts (facts: LDM's openaimodel / autoencoder module
# names, diffusers' UNet2DConditionModel / AutoencoderKL names), one function per direction.
# Both work from tensor names alone, so a folder of another architecture still gets LDM
# names and the strict checks then say what differs. A module map {prefix: (prefix, inner)}
# renames a module; `inner` renames the first part of what follows (a ResNet's layers).

_RESNET = {"in_layers.0": "norm1", "in_layers.2": "conv1", "emb_layers.1": "time_emb_proj",
           "out_layers.0": "norm2", "out_layers.3": "conv2", "skip_connection": "conv_shortcut"}
_VAE_RESNET = {"nin_shortcut": "conv_shortcut"}
_VAE_ATTENTION = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}
_UNET_FIXED = {"time_embed.0": "time_embedding.linear_1", "time_embed.2": "time_embedding.linear_2",
               "input_blocks.0.0": "conv_in", "out.0": "conv_norm_out", "out.2": "conv_out"}
_VAE_FIXED = ("encoder.conv_in", "encoder.conv_out", "decoder.conv_in", "decoder.conv_out", "quant_conv",
              "post_quant_conv")
# The part after `<block>.<child>.` tells an LDM child module's kind.
_LDM_KIND = {"in_layers": "resnet", "emb_layers": "resnet", "out_layers": "resnet", "skip_connection": "resnet",
             "op": "downsample", "conv": "upsample", "norm": "attention", "proj_in": "attention",
             "proj_out": "attention", "transformer_blocks": "attention"}

ModuleMap = dict[str, tuple[str, dict[str, str]]]


def _inverse(table: dict[str, str]) -> dict[str, str]:
    return {b: a for a, b in table.items()}


def _rename(key: str, modules: ModuleMap) -> str | None:
    """`key` under the longest module prefix of `modules` that it starts with, or None."""
    parts = key.split(".")
    for n in range(len(parts) - 1, 0, -1):
        entry = modules.get(".".join(parts[:n]))
        if entry is not None:
            target, inner = entry
            rest = ".".join(parts[n:])
            for old, new in inner.items():
                if rest == old or rest.startswith(old + "."):
                    rest = new + rest[len(old):]
                    break
            return f"{target}.{rest}"
    return None


def _children(keys, group: str) -> dict[int, dict[int, str]]:
    """{block: {child: kind}} of LDM's `input_blocks` / `middle_block` / `output_blocks`."""
    out: dict[int, dict[int, str]] = {}
    for key in keys:
        parts = key.split(".")
        if group == "middle_block" and parts[0] == group and len(parts) > 2:
            out.setdefault(0, {})[int(parts[1])] = _LDM_KIND.get(parts[2], "unknown")
        elif parts[0] == group and len(parts) > 3:
            out.setdefault(int(parts[1]), {})[int(parts[2])] = _LDM_KIND.get(parts[3], "unknown")
    return out


def _ldm_unet_modules(keys) -> ModuleMap:
    """LDM -> diffusers, module by module: input block i of level l holds ResBlock j (and its
    transformer), or the level's Downsample; output blocks go level by level from the bottom,
    an Upsample closing each level but the last."""
    keys = list(keys)
    modules: ModuleMap = {old: (new, {}) for old, new in _UNET_FIXED.items()}
    level, j = 0, 0
    for i, kinds in sorted(_children(keys, "input_blocks").items()):
        if i == 0:
            continue
        if "downsample" in kinds.values():
            modules[f"input_blocks.{i}.0.op"] = (f"down_blocks.{level}.downsamplers.0.conv", {})
            level, j = level + 1, 0
            continue
        for c, kind in kinds.items():
            if kind == "resnet":
                modules[f"input_blocks.{i}.{c}"] = (f"down_blocks.{level}.resnets.{j}", _RESNET)
            elif kind == "attention":
                modules[f"input_blocks.{i}.{c}"] = (f"down_blocks.{level}.attentions.{j}", {})
        j += 1
    resnets = 0
    for c, kind in sorted(_children(keys, "middle_block").get(0, {}).items()):
        if kind == "resnet":
            modules[f"middle_block.{c}"] = (f"mid_block.resnets.{resnets}", _RESNET)
            resnets += 1
        elif kind == "attention":
            modules[f"middle_block.{c}"] = ("mid_block.attentions.0", {})
    level, j = 0, 0
    for i, kinds in sorted(_children(keys, "output_blocks").items()):
        for c, kind in kinds.items():
            if kind == "resnet":
                modules[f"output_blocks.{i}.{c}"] = (f"up_blocks.{level}.resnets.{j}", _RESNET)
            elif kind == "attention":
                modules[f"output_blocks.{i}.{c}"] = (f"up_blocks.{level}.attentions.{j}", {})
            elif kind == "upsample":
                modules[f"output_blocks.{i}.{c}.conv"] = (f"up_blocks.{level}.upsamplers.0.conv", {})
        j += 1
        if "upsample" in kinds.values():
            level, j = level + 1, 0
    return modules


def _indices(keys, pattern: str) -> set[tuple[int, ...]]:
    found = set()
    for key in keys:
        m = re.match(pattern, key)
        if m:
            found.add(tuple(int(g) for g in m.groups()))
    return found


def _diffusers_unet_modules(keys) -> ModuleMap:
    """diffusers -> LDM, module by module (the inverse arithmetic of _ldm_unet_modules): with
    R ResNets per down level, down level l's ResNet j is input block 1 + l(R+1) + j and its
    Downsample input block 1 + l(R+1) + R; up level u's ResNet j is output block u(R+1) + j,
    its Upsample the last child of output block u(R+1) + R."""
    keys = list(keys)
    modules: ModuleMap = {new: (old, {}) for old, new in _UNET_FIXED.items()}
    down = _indices(keys, r"down_blocks\.(\d+)\.resnets\.(\d+)\.")
    if not down:
        return modules
    per_level = 1 + max(j for _, j in down)
    resnet = _inverse(_RESNET)
    for l, j in down:
        modules[f"down_blocks.{l}.resnets.{j}"] = (f"input_blocks.{1 + l * (per_level + 1) + j}.0", resnet)
    for l, j in _indices(keys, r"down_blocks\.(\d+)\.attentions\.(\d+)\."):
        modules[f"down_blocks.{l}.attentions.{j}"] = (f"input_blocks.{1 + l * (per_level + 1) + j}.1", {})
    for (l,) in _indices(keys, r"down_blocks\.(\d+)\.downsamplers\.0\."):
        modules[f"down_blocks.{l}.downsamplers.0.conv"] = (f"input_blocks.{1 + l * (per_level + 1) + per_level}.0.op",
                                                           {})
    mid_attention = any(k.startswith("mid_block.attentions.0.") for k in keys)
    modules["mid_block.resnets.0"] = ("middle_block.0", resnet)
    modules["mid_block.attentions.0"] = ("middle_block.1", {})
    modules["mid_block.resnets.1"] = (f"middle_block.{2 if mid_attention else 1}", resnet)
    up_attention = {u for u, _ in _indices(keys, r"up_blocks\.(\d+)\.attentions\.(\d+)\.")}
    for u, j in _indices(keys, r"up_blocks\.(\d+)\.resnets\.(\d+)\."):
        modules[f"up_blocks.{u}.resnets.{j}"] = (f"output_blocks.{u * (per_level + 1) + j}.0", resnet)
    for u, j in _indices(keys, r"up_blocks\.(\d+)\.attentions\.(\d+)\."):
        modules[f"up_blocks.{u}.attentions.{j}"] = (f"output_blocks.{u * (per_level + 1) + j}.1", {})
    for (u,) in _indices(keys, r"up_blocks\.(\d+)\.upsamplers\.0\."):
        child = 2 if u in up_attention else 1
        modules[f"up_blocks.{u}.upsamplers.0.conv"] = (f"output_blocks.{u * (per_level + 1) + per_level}.{child}.conv",
                                                       {})
    return modules


def _ldm_vae_modules(keys) -> ModuleMap:
    keys = list(keys)
    modules: ModuleMap = {name: (name, {}) for name in _VAE_FIXED}
    levels = 1 + max((l for (l,) in _indices(keys, r"decoder\.up\.(\d+)\.")), default=-1)
    for side in ("encoder", "decoder"):
        modules[f"{side}.mid.block_1"] = (f"{side}.mid_block.resnets.0", _VAE_RESNET)
        modules[f"{side}.mid.block_2"] = (f"{side}.mid_block.resnets.1", _VAE_RESNET)
        modules[f"{side}.mid.attn_1"] = (f"{side}.mid_block.attentions.0", _VAE_ATTENTION)
        modules[f"{side}.norm_out"] = (f"{side}.conv_norm_out", {})
    for l, j in _indices(keys, r"encoder\.down\.(\d+)\.block\.(\d+)\."):
        modules[f"encoder.down.{l}.block.{j}"] = (f"encoder.down_blocks.{l}.resnets.{j}", _VAE_RESNET)
    for (l,) in _indices(keys, r"encoder\.down\.(\d+)\.downsample\."):
        modules[f"encoder.down.{l}.downsample"] = (f"encoder.down_blocks.{l}.downsamplers.0", {})
    for l, j in _indices(keys, r"decoder\.up\.(\d+)\.block\.(\d+)\."):   # LDM counts up levels from the bottom
        modules[f"decoder.up.{l}.block.{j}"] = (f"decoder.up_blocks.{levels - 1 - l}.resnets.{j}", _VAE_RESNET)
    for (l,) in _indices(keys, r"decoder\.up\.(\d+)\.upsample\."):
        modules[f"decoder.up.{l}.upsample"] = (f"decoder.up_blocks.{levels - 1 - l}.upsamplers.0", {})
    return modules


def _diffusers_vae_modules(keys) -> ModuleMap:
    keys = list(keys)
    modules: ModuleMap = {name: (name, {}) for name in _VAE_FIXED}
    levels = 1 + max((u for (u,) in _indices(keys, r"decoder\.up_blocks\.(\d+)\.")), default=-1)
    resnet, attention = _inverse(_VAE_RESNET), _inverse(_VAE_ATTENTION)
    for side in ("encoder", "decoder"):
        modules[f"{side}.mid_block.resnets.0"] = (f"{side}.mid.block_1", resnet)
        modules[f"{side}.mid_block.resnets.1"] = (f"{side}.mid.block_2", resnet)
        modules[f"{side}.mid_block.attentions.0"] = (f"{side}.mid.attn_1", attention)
        modules[f"{side}.conv_norm_out"] = (f"{side}.norm_out", {})
    for l, j in _indices(keys, r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\."):
        modules[f"encoder.down_blocks.{l}.resnets.{j}"] = (f"encoder.down.{l}.block.{j}", resnet)
    for (l,) in _indices(keys, r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\."):
        modules[f"encoder.down_blocks.{l}.downsamplers.0"] = (f"encoder.down.{l}.downsample", {})
    for u, j in _indices(keys, r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\."):
        modules[f"decoder.up_blocks.{u}.resnets.{j}"] = (f"decoder.up.{levels - 1 - u}.block.{j}", resnet)
    for (u,) in _indices(keys, r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\."):
        modules[f"decoder.up_blocks.{u}.upsamplers.0"] = (f"decoder.up.{levels - 1 - u}.upsample", {})
    return modules


def _names(keys, modules: ModuleMap, keep=lambda key: False) -> dict[str, str | None]:
    """{key: renamed key, or None where no module of the map holds it}; `keep`: names that stay."""
    return {key: key if keep(key) else _rename(key, modules) for key in keys}


def _interaction_tokenizer(key: str) -> bool:
    return key.startswith("position_net.")


def ldm_to_diffusers_unet(keys) -> dict[str, str | None]:
    """{LDM UNet name: diffusers name}: the backbone's blocks renamed, each fuser under the
    transformer block it sits in (the suffix is diffusers' GatedSelfAttentionDense's already),
    `position_net.*` as it is."""
    keys = list(keys)
    return _names(keys, _ldm_unet_modules(keys), _interaction_tokenizer)


def diffusers_to_ldm_unet(keys) -> dict[str, str | None]:
    keys = list(keys)
    return _names(keys, _diffusers_unet_modules(keys), _interaction_tokenizer)


def ldm_to_diffusers_vae(keys) -> dict[str, str | None]:
    keys = list(keys)
    return _names(keys, _ldm_vae_modules(keys))


def diffusers_to_ldm_vae(keys) -> dict[str, str | None]:
    keys = list(keys)
    return _names(keys, _diffusers_vae_modules(keys))


def _all_named(names: dict, what: str) -> dict[str, str]:
    unnamed = sorted(k for k, v in names.items() if v is None)
    if unnamed:
        raise CheckpointError(f"the {what} has {len(unnamed)} tensors with no diffusers name (an architecture "
                              f"diffusers' SD v1.x blocks cannot hold), e.g. {unnamed[:3]}")
    return names


def unet_names(model: InteractDiffusion, unet_config: dict | None = None) -> dict[str, str]:
    """{LDM name: diffusers name} for every tensor of the model's UNet section (`unet_config`
    is not needed: kept for callers that pass it)."""
    return _all_named(ldm_to_diffusers_unet(model.unet.state_dict()), "UNet")


def vae_names(model: InteractDiffusion) -> dict[str, str]:
    return _all_named(ldm_to_diffusers_vae(model.autoencoder.state_dict()), "autoencoder")


# ----------------------------------------------------------------------------- configs

def _diffusers_unet_config(params, context_dim: int, gated: bool) -> dict:
    """diffusers' UNet2DConditionModel config for an LDM UNet's params (SD v1.x's family).
    diffusers' `attention_head_dim` is, for SD v1.x, the number of heads."""
    mult, levels = list(params.channel_mult), len(params.channel_mult)
    attn = set(params.attention_resolutions)
    down = ["CrossAttnDownBlock2D" if 2 ** level in attn else "DownBlock2D" for level in range(levels)]
    up = ["CrossAttnUpBlock2D" if 2 ** level in attn else "UpBlock2D" for level in reversed(range(levels))]
    config = {
        "sample_size": params.image_size, "in_channels": params.in_channels, "out_channels": params.out_channels,
        "down_block_types": down, "up_block_types": up, "block_out_channels": [params.model_channels * m for m in mult],
        "layers_per_block": params.num_res_blocks, "cross_attention_dim": context_dim,
        "attention_head_dim": params.num_heads, "norm_num_groups": params.get("norm_groups", 32),
        "transformer_layers_per_block": params.get("transformer_depth", 1), "use_linear_projection": False,
        "mid_block_type": "UNetMidBlock2DCrossAttn",
    }
    if gated:
        config["attention_type"] = "gated"
    return config


def _diffusers_vae_config(params) -> dict:
    mult = list(params.ch_mult)
    return {"in_channels": 3, "out_channels": 3, "latent_channels": params.z_channels,
            "block_out_channels": [params.ch * m for m in mult], "layers_per_block": params.num_res_blocks,
            "down_block_types": ["DownEncoderBlock2D"] * len(mult), "up_block_types": ["UpDecoderBlock2D"] * len(mult),
            "norm_num_groups": params.get("norm_groups", 32), "sample_size": 512}


# LDM's VAE attention uses 1x1 convolutions where diffusers uses linear layers: the same numbers.
_VAE_LINEAR = re.compile(r".*\.attentions\.0\.(to_q|to_k|to_v|to_out\.0)\.weight$")
_VAE_CONV = re.compile(r".*\.attn_1\.(q|k|v|proj_out)\.weight$")


# ----------------------------------------------------------------------------- writing

def check_export_path(out: str | os.PathLike) -> Path:
    """Where an export goes: a new folder whose parent is (or can be made) a folder; made before
    any weights are read. CheckpointError naming the path otherwise."""
    out = Path(out)
    if out.exists() or out.is_symlink():
        raise CheckpointError(f"{out}: exists; choose a new folder")
    try:
        writable_parent(out, "export to")
    except ValueError as err:
        raise CheckpointError(str(err)) from None
    return out


def export_diffusers(model: InteractDiffusion, out: str | os.PathLike, half: bool = False,
                     with_control: bool = True) -> Path:
    """Write `model` as a diffusers folder at `out`, atomically: built in a hidden temporary folder
    beside it (`.<name>.tmp-<pid>`; one a killed export left is removed by the next), then renamed;
    an existing `out` is an error. The model's own config goes with it (CONFIG_FILE), so the folder
    loads without --config. `with_control` False (a plain SD backbone): a plain SD folder, no
    fusers and no tokenizer in its UNet. CheckpointError naming `out` when the disk refuses.
    Returns the folder."""
    from safetensors.torch import save_file
    out = check_export_path(out)
    remove_stale_temporaries(out.parent)
    unet_state = {k: v for k, v in model.unet.state_dict().items() if with_control or not is_interaction_key(k)}
    unet_map = unet_names(model)
    vae_state = model.autoencoder.state_dict()
    vae_map = vae_names(model) if vae_state else {}
    params = model.config.model.params
    gated = any(".fuser." in k for k in unet_state)
    unet_config = _diffusers_unet_config(params, params.context_dim, gated)
    suffix = ".fp16.safetensors" if half else ".safetensors"

    def tensors(state: dict, names: dict) -> dict:
        written = {}
        for key, value in state.items():
            value = value.detach().cpu()
            if _VAE_LINEAR.match(names[key]) and value.dim() == 4:
                value = value[:, :, 0, 0]
            if value.is_floating_point():  # what the folder says it holds (a loaded fp16 file stays fp16)
                value = value.half() if half else value.float()
            written[names[key]] = value.contiguous()
        return written

    temp = temporary_path(out)
    temp.mkdir()
    try:
        (temp / "unet").mkdir()
        save_file(tensors(unet_state, unet_map), str(temp / "unet" / (WEIGHT_FILES["unet"] + suffix)))
        unet_json = {"_class_name": "UNet2DConditionModel", **unet_config}
        if gated:  # what diffusers' own classes do not say: which tokenizer, which fuser variant
            from interact.model import interaction_options
            unet_json["interaction_tokenizer"] = _plain(model.config.interaction.position_net)
            unet_json["interaction"] = {k: v for k, v in interaction_options(model.config).items()}
        (temp / "unet" / "config.json").write_text(json.dumps(_plain(unet_json), indent=2))
        if vae_state:  # (a parameter-free first stage, the toy world's, has no vae/)
            (temp / "vae").mkdir()
            save_file(tensors(vae_state, vae_map), str(temp / "vae" / (WEIGHT_FILES["vae"] + suffix)))
            (temp / "vae" / "config.json").write_text(json.dumps(
                {"_class_name": "AutoencoderKL", **_diffusers_vae_config(model.config.autoencoder.params),
                 "scaling_factor": float(model.scale_factor)}, indent=2))
        _write_text_encoder(model, temp, half)
        _write_scheduler(model, temp)
        OmegaConf.save(model.config, temp / CONFIG_FILE)
        os.replace(temp, out)
    except (OSError, SafetensorError) as err:
        shutil.rmtree(temp, ignore_errors=True)
        reason = getattr(err, "strerror", None) or str(err).splitlines()[0]
        raise CheckpointError(f"{out}: cannot be written ({reason}); nothing was left behind") from None
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    return out


def _plain(value):
    from omegaconf import OmegaConf
    if OmegaConf.is_config(value):
        return OmegaConf.to_container(value, resolve=True)
    return {k: _plain(v) for k, v in value.items()} if isinstance(value, dict) else value


def _write_text_encoder(model: InteractDiffusion, folder: Path, half: bool) -> None:
    encoder = model.text_encoder
    transformer = encoder.transformer
    from transformers import CLIPTextModel
    hf = CLIPTextModel(transformer.config)
    state = {k[len("transformer."):] if k.startswith("transformer.") else k: v
             for k, v in encoder.state_dict().items()}
    target = hf.state_dict()
    renamed = {("text_model." + k if "text_model." + k in target else k): v for k, v in state.items()}
    unmatched = sorted(set(target) ^ set(renamed))
    if unmatched:
        raise RuntimeError(f"text encoder names do not match transformers' CLIPTextModel: {unmatched[:3]}")
    hf.load_state_dict(renamed, strict=True)
    if half:
        hf = hf.half()
    hf.save_pretrained(str(folder / "text_encoder"), safe_serialization=True,
                       variant="fp16" if half else None)
    if hasattr(encoder.tokenizer, "save_pretrained"):
        encoder.tokenizer.save_pretrained(str(folder / "tokenizer"))


def _write_scheduler(model: InteractDiffusion, folder: Path) -> None:
    d = model.diffusion
    (folder / "scheduler").mkdir()
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps({
        "_class_name": "PNDMScheduler", "num_train_timesteps": d.num_timesteps, "beta_start": d.linear_start,
        "beta_end": d.linear_end, "beta_schedule": "scaled_linear", "prediction_type":
            "epsilon" if d.parameterization == "eps" else "v_prediction",
        "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1}, indent=2))


# ----------------------------------------------------------------------------- reading

def check_folder(path: str | os.PathLike, vae: bool = False) -> Path:
    """A diffusers model folder, or CheckpointError saying what is missing (`vae`: vae/ too)."""
    path = Path(path)
    for part in NEEDED + (("vae",) if vae else ()):
        if not (path / part).is_dir():
            if part == "vae" and (path / "unet").is_dir():
                own = (f"; the folder carries its own config ({path / CONFIG_FILE}): leave --config out"
                       if (path / CONFIG_FILE).is_file() else "")
                raise CheckpointError(f"{path}: has no vae/ subfolder, which the given config's model needs (its "
                                      f"autoencoder has weights): the folder is of a model whose first stage has "
                                      f"none, such as the toy model (configs/toy_model.yaml){own}")
            raise CheckpointError(f"{path}: not a diffusers model folder: no {part}/ subfolder (expected unet/, vae/, "
                                  f"text_encoder/, tokenizer/, scheduler/)")
        if not (path / part / "config.json").is_file():
            raise CheckpointError(f"{path}: not a diffusers model folder: no {part}/config.json")
        _weights_file(path / part, WEIGHT_FILES[part])
    return path


def _weights_file(folder: Path, stem: str) -> Path:
    for name in (f"{stem}.safetensors", f"{stem}.fp16.safetensors", f"{stem}.bin", f"{stem}.fp16.bin"):
        if (folder / name).is_file():
            return folder / name
    raise CheckpointError(f"{folder}: no weights ({stem}.safetensors, {stem}.fp16.safetensors or {stem}.bin)")


def _read_weights(file: Path) -> dict:
    raw = read_file(file)   # safetensors, or a weights-only torch load; damaged files say so
    if not all(isinstance(v, torch.Tensor) for v in raw.values()):
        raise CheckpointError(f"{file}: expected a flat dict of tensors")
    return raw


def read_folder(path: str | os.PathLike, model: InteractDiffusion | None = None) -> dict:
    """A diffusers folder as this project's sections under LDM names: `model` (the UNet, with the
    interaction control when the folder has it), `autoencoder`, `text_encoder`. Names that have
    no LDM counterpart stay as they are, so the strict checks list them. With `model`: its
    schedule must be the folder's, and vae/ is required when its first stage has weights."""
    path = check_folder(path, vae=model is not None and bool(model.autoencoder.state_dict()))
    if model is not None:
        mismatch = scheduler_mismatch(path, model)
        if mismatch:
            raise CheckpointError(f"{path}: {mismatch}")
    unet = _read_weights(_weights_file(path / "unet", WEIGHT_FILES["unet"]))
    to_ldm = diffusers_to_ldm_unet(unet)
    sections = {"model": {to_ldm[k] or k: v for k, v in unet.items()}}
    if model is not None:
        model.trained_control.fit_folder_state(sections["model"])
    if (path / "vae").is_dir():
        vae = _read_weights(_weights_file(path / "vae", WEIGHT_FILES["vae"]))
        vae_to_ldm = diffusers_to_ldm_vae(vae)
        autoencoder = {}
        for key, value in vae.items():
            name = vae_to_ldm[key] or key
            autoencoder[name] = value[:, :, None, None] if _VAE_CONV.match(name) and value.dim() == 2 else value
        sections["autoencoder"] = autoencoder
    text = _read_weights(_weights_file(path / "text_encoder", WEIGHT_FILES["text_encoder"]))
    sections["text_encoder"] = {"transformer." + k: v for k, v in text.items()}
    sections[FOLDER_MARK] = str(path)
    return sections


def tokenizer_folder(*paths) -> str | None:
    """The `tokenizer/` of the first diffusers folder among `paths` that has one (a fine-tune may
    have changed the vocabulary), else None (CLIP's own)."""
    found = [Path(p) / "tokenizer" for p in paths if p is not None and (Path(p) / "tokenizer").is_dir()]
    return str(found[0]) if found else None


def folder_unet_keys(path: str | os.PathLike) -> list[str]:
    """The UNet tensor names of a diffusers folder, read from its weights file's header when it is
    safetensors (for telling an InteractDiffusion, GLIGEN or plain SD folder apart cheaply)."""
    file = _weights_file(check_folder(path) / "unet", WEIGHT_FILES["unet"])
    if file.suffix == ".safetensors":
        from safetensors import safe_open
        with safe_open(str(file), framework="pt") as f:
            return list(f.keys())
    return list(_read_weights(file))


def scheduler_mismatch(path: str | os.PathLike, model: InteractDiffusion) -> str | None:
    """How the folder's noise schedule differs from the config's, or None."""
    file = Path(path) / "scheduler" / "scheduler_config.json"
    if not file.is_file():
        return None
    config = json.loads(file.read_text())
    d = model.diffusion
    theirs = (config.get("num_train_timesteps", 1000), config.get("beta_start"), config.get("beta_end"),
              config.get("beta_schedule", "scaled_linear"))
    ours = (d.num_timesteps, d.linear_start, d.linear_end, "scaled_linear")
    if theirs[0] != ours[0] or theirs[3] != ours[3] or any(
            abs(float(a) - float(b)) > 1e-9 for a, b in zip(theirs[1:3], ours[1:3]) if a is not None):
        return f"the folder's schedule {theirs} differs from the config's {ours}"
    return None


def peek_kind(path: str | os.PathLike, allow_pickle: bool = False) -> str:
    """classify() of a file without reading its tensors' data where the format allows: a torch
    zip file is memory-mapped, a safetensors file's header read; other files are read whole. A
    diffusers folder is told by its UNet's tensor names."""
    path = Path(path)
    if path.is_dir():
        try:
            return classify({"model": {k: torch.empty(0) for k in folder_unet_keys(path)}})
        except CheckpointError:
            return "unknown"
    if path.is_file() and sniff_format(path) == "torch-zip":
        try:
            return classify(load_torch(path, config_globals(), allow_pickle, mmap=True))
        except Exception:  # noqa: BLE001  (read_file gives the proper message when the file is loaded)
            return "unknown"
    if path.is_file() and sniff_format(path) == "safetensors":
        from safetensors import safe_open
        try:
            with safe_open(str(path), framework="pt") as f:
                return classify({k: torch.empty(0) for k in f.keys()})
        except Exception:  # noqa: BLE001
            return "unknown"
    return classify(read_file(path, allow_pickle)) if path.is_file() else "unknown"


def generation_config(path: str | os.PathLike | None, allow_pickle: bool = False) -> Path:
    """The model config a checkpoint (file or diffusers folder) generates with when none is
    given: the one a folder exported by this project carries (CONFIG_FILE), else its format's
    (formats.formats(): GLIGEN's for a GLIGEN file, SD v1.x InteractDiffusion's otherwise)."""
    if path is not None and (Path(path) / CONFIG_FILE).is_file():
        return Path(path) / CONFIG_FILE
    return config_for_kind(peek_kind(path, allow_pickle)) if path is not None else SD_V1_CONFIG
