"""Diffusers folders, both ways: reading an SD v1.x or InteractDiffusion/GLIGEN model saved in
diffusers' layout, and writing a model of this project as such a folder.

A folder (docs/reference.md §3):

    unet/config.json + diffusion_pytorch_model[.fp16].safetensors   diffusers names; with the
        interaction control, the fusers inside the transformer blocks
        (`down_blocks.0.attentions.0.transformer_blocks.0.fuser.*`, attention_type "gated") and
        `position_net.*` under its original sub-names
    vae/config.json + diffusion_pytorch_model[.fp16].safetensors
    text_encoder/config.json + model[.fp16].safetensors              a transformers CLIPTextModel
    tokenizer/                                                       CLIP tokenizer files
    scheduler/scheduler_config.json                                  the noise schedule

The names are translated with diffusers' own converter for SD originals
(`convert_ldm_unet_checkpoint`, `convert_ldm_vae_checkpoint`), a maintained mapping: it is run on
this project's LDM-named tensors and each output is matched to its input by storage (the converter
copies or reshapes, never computes), which gives the name map in both directions; the fusers take
the map of the transformer block they sit in. Reading goes through the same map reversed, so
export and import agree by construction, and the tests compare the exported UNet with diffusers'
own UNet2DConditionModel.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from interact.checkpoint.formats import (CheckpointError, classify, config_globals, read_file,
                                         sniff_format)
from interact.model import InteractDiffusion, is_interaction_key

WEIGHT_FILES = {"unet": "diffusion_pytorch_model", "vae": "diffusion_pytorch_model", "text_encoder": "model"}
NEEDED = ("unet", "text_encoder")   # and vae/ for a model whose first stage has weights


# ----------------------------------------------------------------------------- the name maps

def _diffusers_unet_config(params, context_dim: int, gated: bool) -> dict:
    """diffusers' UNet2DConditionModel config for an LDM UNet's params (SD v1.x's family)."""
    mult, levels = list(params.channel_mult), len(params.channel_mult)
    attn = set(params.attention_resolutions)
    down, up = [], []
    for level in range(levels):
        with_attention = 2 ** level in attn
        down.append("CrossAttnDownBlock2D" if with_attention else "DownBlock2D")
    for level in reversed(range(levels)):
        with_attention = 2 ** level in attn
        up.append("CrossAttnUpBlock2D" if with_attention else "UpBlock2D")
    config = {
        "sample_size": params.image_size, "in_channels": params.in_channels, "out_channels": params.out_channels,
        "down_block_types": down, "up_block_types": up, "block_out_channels": [params.model_channels * m for m in mult],
        "layers_per_block": params.num_res_blocks, "cross_attention_dim": context_dim,
        "attention_head_dim": params.num_heads, "norm_num_groups": params.get("norm_groups", 32),
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


def _markers(state: dict, prefix: str) -> dict:
    """Stand-ins of the tensors' shapes, one storage of one element each (zero strides): the
    converter is run on these, so a model built on the meta device (no data) has its map too."""
    return {prefix + k: torch.zeros(1).expand(v.shape) for k, v in state.items()}


def _map_by_storage(converted: dict, original: dict) -> dict[str, str]:
    """{diffusers name: LDM name} from a converter's output and input (the same storages)."""
    by_pointer = {t.untyped_storage().data_ptr(): name for name, t in original.items()}
    mapping = {}
    for name, tensor in converted.items():
        source = by_pointer.get(tensor.untyped_storage().data_ptr())
        if source is None:
            raise RuntimeError(f"diffusers' converter computed {name} instead of copying it: no name map")
        mapping[name] = source
    return mapping


def unet_names(model: InteractDiffusion, unet_config: dict) -> dict[str, str]:
    """{LDM name: diffusers name} for every tensor of the model's `model` section."""
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint
    state = model.unet.state_dict()
    backbone = _markers({k: v for k, v in state.items() if not is_interaction_key(k)}, "model.diffusion_model.")
    converted = convert_ldm_unet_checkpoint(backbone, {k: v for k, v in unet_config.items() if k != "attention_type"})
    names = {ldm[len("model.diffusion_model."):]: new for new, ldm in _map_by_storage(converted, backbone).items()}
    missing = sorted(set(k for k in state if not is_interaction_key(k)) - set(names))
    if missing:
        raise RuntimeError(f"diffusers' converter left {len(missing)} UNet tensors unnamed, e.g. {missing[:3]}")
    # A fuser sits in a transformer block: it takes that block's prefix.
    prefixes = {}
    for ldm, new in names.items():
        if ".transformer_blocks." in ldm and ".attn1." in ldm:
            prefixes[ldm.split(".attn1.")[0] + "."] = new.split(".attn1.")[0] + "."
    for key in state:
        if ".fuser." in key:
            block = key.split("fuser.")[0]
            names[key] = prefixes[block] + key[len(block):]
        elif key.startswith("position_net."):
            names[key] = key
    return names


def vae_names(model: InteractDiffusion) -> dict[str, str]:
    """{LDM name: diffusers name} for the autoencoder."""
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint
    state = _markers(model.autoencoder.state_dict(), "first_stage_model.")
    converted = convert_ldm_vae_checkpoint(state, _diffusers_vae_config(model.config.autoencoder.params))
    return {ldm[len("first_stage_model."):]: new for new, ldm in _map_by_storage(converted, state).items()}


def _reshape_like(value: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """LDM's VAE attention uses 1x1 convolutions where diffusers uses linear layers."""
    return value if value.shape == shape else value.reshape(shape)


# ----------------------------------------------------------------------------- writing

def export_diffusers(model: InteractDiffusion, out: str | os.PathLike, half: bool = False) -> Path:
    """Write `model` as a diffusers folder at `out` (atomically: built beside it, then renamed;
    an existing `out` is an error). Returns the folder."""
    from safetensors.torch import save_file
    out = Path(out)
    if out.exists():
        raise CheckpointError(f"{out}: exists; choose a new folder")
    params = model.config.model.params
    gated = any(".fuser." in k for k in model.unet.state_dict())
    unet_config = _diffusers_unet_config(params, params.context_dim, gated)
    temp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent if out.parent.exists() else None))
    try:
        dtype = torch.float16 if half else None

        def tensors(state: dict, names: dict, shapes: dict | None = None) -> dict:
            out_state = {}
            for key, value in state.items():
                value = value.detach().cpu().contiguous()
                if shapes is not None:
                    value = _reshape_like(value, shapes[names[key]]).contiguous()
                out_state[names[key]] = value.to(dtype) if dtype is not None and value.is_floating_point() else value
            return out_state

        suffix = ".fp16.safetensors" if half else ".safetensors"
        (temp / "unet").mkdir()
        save_file(tensors(model.unet.state_dict(), unet_names(model, unet_config)),
                  str(temp / "unet" / (WEIGHT_FILES["unet"] + suffix)))
        unet_json = {"_class_name": "UNet2DConditionModel", **unet_config}
        if gated:
            unet_json["interaction_tokenizer"] = dict(model.config.interaction.position_net)
        (temp / "unet" / "config.json").write_text(json.dumps(_plain(unet_json), indent=2))
        if model.autoencoder.state_dict():
            from diffusers import AutoencoderKL
            vae_config = _diffusers_vae_config(model.config.autoencoder.params)
            shapes = {k: v.shape for k, v in AutoencoderKL(**vae_config).state_dict().items()}
            (temp / "vae").mkdir()
            save_file(tensors(model.autoencoder.state_dict(), vae_names(model), shapes),
                      str(temp / "vae" / (WEIGHT_FILES["vae"] + suffix)))
            (temp / "vae" / "config.json").write_text(json.dumps(
                {"_class_name": "AutoencoderKL", **vae_config, "scaling_factor": float(model.scale_factor)}, indent=2))
        _write_text_encoder(model, temp, half)
        _write_scheduler(model, temp)
        os.replace(temp, out)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    return out


def _plain(value):
    from omegaconf import OmegaConf
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else (
        {k: _plain(v) for k, v in value.items()} if isinstance(value, dict) else value)


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
    if file.suffix == ".safetensors":
        from safetensors.torch import load_file
        return load_file(str(file))
    return torch.load(file, map_location="cpu", weights_only=True)


def read_folder(path: str | os.PathLike, model: InteractDiffusion) -> dict:
    """A diffusers folder as this project's sections (LDM names): `model` (the UNet, with the
    interaction control when the folder has it), `autoencoder`, `text_encoder`. The name maps come
    from `model`'s config (its architecture must be the folder's; the strict checks that follow
    say where it is not)."""
    path = check_folder(path, vae=bool(model.autoencoder.state_dict()))
    mismatch = scheduler_mismatch(path, model)
    if mismatch:
        raise CheckpointError(f"{path}: {mismatch}")
    unet_file = _read_weights(_weights_file(path / "unet", WEIGHT_FILES["unet"]))
    params = model.config.model.params
    gated = any(".fuser." in k for k in unet_file)
    to_ldm = {new: ldm for ldm, new in unet_names(model, _diffusers_unet_config(params, params.context_dim,
                                                                               gated)).items()}
    unknown = sorted(k for k in unet_file if k not in to_ldm)
    if unknown:
        raise CheckpointError(f"{path / 'unet'}: {len(unknown)} tensors have no counterpart in the model config, e.g. "
                              f"{unknown[:3]} (is the --config right for this folder?)")
    sections = {"model": {to_ldm[k]: v for k, v in unet_file.items()}}
    shapes = model.autoencoder.state_dict()
    if shapes:  # (a parameter-free first stage, the toy world's, has no vae/)
        vae_file = _read_weights(_weights_file(path / "vae", WEIGHT_FILES["vae"]))
        vae_to_ldm = {new: ldm for ldm, new in vae_names(model).items()}
        sections["autoencoder"] = {vae_to_ldm[k]: _reshape_like(v, shapes[vae_to_ldm[k]].shape)
                                   for k, v in vae_file.items() if k in vae_to_ldm}
    text = _read_weights(_weights_file(path / "text_encoder", WEIGHT_FILES["text_encoder"]))
    sections["text_encoder"] = {"transformer." + k: v for k, v in text.items()}
    sections[FOLDER_MARK] = str(path)
    return sections


FOLDER_MARK = "diffusers_folder"   # in a read folder's dict: where it came from (describe_kind says so)


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
            with torch.serialization.safe_globals(config_globals()):
                return classify(torch.load(path, map_location="cpu", mmap=True, weights_only=not allow_pickle))
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
